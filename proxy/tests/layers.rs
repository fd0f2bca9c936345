//! The data plane's layering, checked from its source (issue 15).
//!
//! Reads every `crate::` path in `proxy/src` (in `use` trees and inline
//! paths, test modules excluded), maps each to the file that defines it and
//! fails when
//! - two files import each other, directly or through others (a cycle), or
//! - a module imports one from a higher layer, or
//! - a top-level module is not in [`LAYERS`] (a new one must be placed).
//!
//! Layers, bottom to top (docs/architecture.md draws them):
//! 0 `config`, `error`, `metrics`; 1 `protocol` (codecs);
//! 2 `health`, `upstream`, `snapshot`, `events` (state and decisions);
//! 3 `listener`, `observe`, `fallback`, `gateway` (serving); 4 `engine` (the handle).
//! A module may use its own layer or lower ones, never a higher one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("error", 0),
    ("metrics", 0),
    ("protocol", 1),
    ("health", 2),
    ("upstream", 2),
    ("cluster", 2),
    ("snapshot", 2),
    ("events", 2),
    ("workers", 2),
    ("listener", 3),
    ("observe", 3),
    ("fallback", 3),
    ("gateway", 3),
    ("engine", 4),
];

type Module = Vec<String>;

/// Every `.rs` file under `dir`, as (module path, file).
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<Module, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read proxy/src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .with_extension("");
            let mut m: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
                m.pop();
            }
            out.insert(m, path);
        }
    }
}

/// The source without comments and without test-only code: a file that is
/// a test module, or from `#[cfg(test)]` followed by `mod` to the end.
fn production_source(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read source");
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            let next = lines.peek().map(|n| n.trim_end()).unwrap_or("");
            if next.ends_with(';') {
                // `#[cfg(test)] mod x;`: the file itself is a test module.
                lines.next();
                continue;
            }
            break;
        }
        let code = match t.find("//") {
            Some(0) => "",
            _ => line.split(" //").next().unwrap_or(line),
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Reads a use tree (or an inline path) at `i`, just after `crate::`,
/// pushing every full path it names. Returns where it ended.
fn use_tree(s: &[u8], mut i: usize, prefix: &Module, out: &mut Vec<Module>) -> usize {
    let mut path = prefix.clone();
    loop {
        i = skip_ws(s, i);
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                i = skip_ws(s, i);
                if i >= s.len() {
                    return i;
                }
                if s[i] == b'}' {
                    return i + 1;
                }
                if s[i] == b',' {
                    i += 1;
                    continue;
                }
                let before = i;
                i = use_tree(s, i, &path, out);
                if i == before {
                    i += 1;
                }
            }
        }
        let (name, next) = ident(s, i);
        if name.is_empty() {
            if path.len() > prefix.len() {
                out.push(path);
            }
            return i;
        }
        path.push(name);
        i = skip_ws(s, next);
        if s[i..].starts_with(b"::") {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// The file module that defines `path`: its longest prefix that is a file.
fn owner<'a>(files: &'a BTreeMap<Module, PathBuf>, path: &[String]) -> Option<&'a Module> {
    (1..=path.len())
        .rev()
        .find_map(|n| files.get_key_value(&path[..n]).map(|(k, _)| k))
}

struct Graph {
    files: BTreeMap<Module, PathBuf>,
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&root, &root, &mut files);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, path) in &files {
        let src = production_source(path);
        let s = src.as_bytes();
        let mut paths = Vec::new();
        let mut at = 0;
        while let Some(off) = src[at..].find("crate::") {
            let start = at + off;
            let word_before =
                start > 0 && (s[start - 1].is_ascii_alphanumeric() || s[start - 1] == b'_');
            at = start + "crate::".len();
            if !word_before {
                at = use_tree(s, at, &Vec::new(), &mut paths).max(at);
            }
        }
        let set = edges.entry(m.clone()).or_default();
        for p in paths {
            if let Some(target) = owner(&files, &p) {
                // A module's own children and its parent module file are
                // one unit; an edge to itself is no edge.
                if target != m {
                    set.insert(target.clone());
                }
            }
        }
    }
    Graph { files, edges }
}

fn layer(m: &Module) -> Option<u8> {
    let top = m.first()?;
    LAYERS.iter().find(|(n, _)| n == top).map(|(_, l)| *l)
}

/// Tarjan's strongly connected components with more than one file.
fn cycles(g: &Graph) -> Vec<Vec<Module>> {
    struct St<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(st: &mut St<'a>, v: &'a Module) {
        st.index.insert(v, st.next);
        st.low.insert(v, st.next);
        st.next += 1;
        st.stack.push(v);
        st.on.insert(v);
        let g = st.g;
        for w in g.edges.get(v).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for m in g.files.keys() {
        if !st.index.contains_key(m) {
            visit(&mut st, m);
        }
    }
    st.out
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn the_reader_sees_use_trees_and_inline_paths() {
    let mut out = Vec::new();
    let src = b"{a::b, c::{d, e::F}, g} rest";
    use_tree(src, 0, &Vec::new(), &mut out);
    let got: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["a::b", "c::d", "c::e::F", "g"]);
    let mut out = Vec::new();
    use_tree(b"health::redis::command(&x)", 0, &Vec::new(), &mut out);
    assert_eq!(out, vec![vec!["health", "redis", "command"]]);
    // The graph of the real crate is not empty: the reader found edges.
    let g = graph();
    assert!(g.files.len() > 20, "found {} files", g.files.len());
    assert!(g.edges.values().map(BTreeSet::len).sum::<usize>() > 50);
}

#[test]
fn every_top_level_module_has_a_layer() {
    let g = graph();
    let unplaced: BTreeSet<String> = g
        .files
        .keys()
        .filter(|m| !m.is_empty() && layer(m).is_none())
        .map(|m| m[0].clone())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer (add them to LAYERS in {}): {unplaced:?}",
        file!()
    );
}

#[test]
fn dependencies_point_down() {
    let g = graph();
    let mut upward = Vec::new();
    for (from, tos) in &g.edges {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            if let Some(lt) = layer(to) {
                if lt > lf {
                    upward.push(format!(
                        "{} (layer {lf}) -> {} (layer {lt})",
                        show(from),
                        show(to)
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "upward imports:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn no_import_cycles() {
    let g = graph();
    let found = cycles(&g);
    let text: Vec<String> = found
        .iter()
        .map(|c| c.iter().map(show).collect::<Vec<_>>().join(", "))
        .collect();
    assert!(
        found.is_empty(),
        "import cycles between files of proxy/src:\n  {}",
        text.join("\n  ")
    );
}
