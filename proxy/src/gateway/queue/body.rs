//! Request and response bodies, one file each under `bodies/`, written
//! durably before the log record that refers to them.

use super::*;

/// Which body of an entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyKind {
    Request,
    Result,
}

impl BodyKind {
    pub(super) fn ext(self) -> &'static str {
        match self {
            BodyKind::Request => "req",
            BodyKind::Result => "res",
        }
    }
}

pub(super) fn body_path(dir: &Path, id: &str, kind: BodyKind) -> PathBuf {
    dir.join(BODIES_DIR).join(format!("{id}.{}", kind.ext()))
}

/// Writes a body file and makes it durable (file, then directory).
pub(super) fn write_body(dir: &Path, id: &str, kind: BodyKind, body: &[u8]) -> io::Result<()> {
    let path = body_path(dir, id, kind);
    let written = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
    }
    .and_then(|mut f| {
        f.write_all(body)?;
        f.sync_all()
    })
    .and_then(|()| sync_dir(&dir.join(BODIES_DIR)));
    if written.is_err() {
        let _ = fs::remove_file(&path);
    }
    written
}

/// Removes a body file; a missing one is fine. Not fsync'd: a removal lost
/// in a crash is redone by the sweep at open.
pub(super) fn remove_body(dir: &Path, id: &str, kind: BodyKind) {
    let path = body_path(dir, id, kind);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a queue body file")
        }
    }
}

/// Writes an inline body of an old log to its file. A failure is logged:
/// the entry then fails at delivery (missing body) or shows no result body,
/// rather than the whole queue refusing to open.
pub(super) fn migrate(dir: &Path, id: &str, kind: BodyKind, body: Option<Vec<u8>>) {
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return;
    };
    if let Err(e) = write_body(dir, id, kind, &body) {
        let path = body_path(dir, id, kind);
        tracing::error!(path = %path.display(), error = %e, "cannot move an inline queue body to its file");
    }
}
