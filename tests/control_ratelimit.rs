//! Issue 12 item 5: one bad neighbour must not lock every operator out.
//! Behind NAT or a reverse proxy every operator shares one client address;
//! once that address has failed authentication `auth_failures_per_minute`
//! times, bad and missing tokens get 429, but a valid token still gets in.
//! The real binary, from 127.0.0.1.

mod support;

use std::time::Duration;

use support::continuity::{Continuity, OPERATOR_TOKEN, VIEWER_TOKEN};

const STATUS: &str = "/api/ops/failover/status";

#[test]
fn a_valid_token_gets_in_from_a_rate_limited_address() {
    let engine = Continuity::builder()
        .control("auth_failures_per_minute = 3")
        .start();

    // Hammer with bad (and missing) tokens until the address is limited.
    let mut limited = false;
    for i in 0..50 {
        let token = if i % 2 == 0 { Some("guess") } else { None };
        let (status, body) = engine.request("GET", STATUS, None, token);
        match status {
            401 => {}
            429 => {
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                limited = true;
                break;
            }
            other => panic!("attempt {i}: {other} {body}"),
        }
    }
    assert!(limited, "50 bad tokens and no 429");

    // Bad tokens stay refused with 429...
    let (status, _) = engine.request("GET", STATUS, None, Some("guess-again"));
    assert_eq!(status, 429);
    let (status, _) = engine.request("GET", STATUS, None, None);
    assert_eq!(status, 429);

    // ...while valid tokens from the same address get in, for reads and for
    // an operator's POST, again and again (a success is never counted).
    for _ in 0..10 {
        let (status, body) = engine.request("GET", STATUS, None, Some(OPERATOR_TOKEN));
        assert_eq!(status, 200, "operator locked out: {body}");
        let (status, body) = engine.request("GET", STATUS, None, Some(VIEWER_TOKEN));
        assert_eq!(status, 200, "viewer locked out: {body}");
    }
    let (status, body) = engine.request(
        "POST",
        "/api/ops/failover/trigger/nothing-here",
        Some(r#"{"reason": "still works"}"#),
        Some(OPERATOR_TOKEN),
    );
    assert_ne!(status, 429, "operator POST locked out: {body}");
    assert_ne!(status, 401, "{body}");
    // A valid token with the wrong role is 403, not a failure and not 429.
    let (status, body) = engine.request(
        "POST",
        "/api/ops/failover/trigger/nothing-here",
        Some(r#"{"reason": "x"}"#),
        Some(VIEWER_TOKEN),
    );
    assert_eq!(status, 403, "{body}");

    // The refusals were counted.
    let limited = engine
        .metric("continuity_auth_failures_total{reason=\"rate_limited\"}")
        .unwrap_or(0.0);
    assert!(limited >= 2.0, "rate_limited = {limited}");
    // And the bad neighbour is still limited.
    std::thread::sleep(Duration::from_millis(100));
    let (status, _) = engine.request("GET", STATUS, None, Some("guess"));
    assert_eq!(status, 429);
}
