//! Acceptance 2: raw-socket framing like rpc.py (pretty-printed JSON values one after
//! another on one connection, ids 1..n), batches, notifications, parse errors.

mod common;

use common::{Daemon, Raw};
use serde_json::json;

#[test]
fn rpc_py_style_stream_on_one_connection() {
    let d = Daemon::start(&[]);
    let mut c = Raw::connect(&d.sock);
    let r = c.call(1, "spdk_get_version", None);
    assert_eq!(r["jsonrpc"], "2.0");
    assert_eq!(r["id"], 1);
    assert!(r["result"]["version"].is_string());
    let r = c.call(
        2,
        "bdev_null_create",
        Some(json!({"name":"N0","block_size":512,"num_blocks":64})),
    );
    assert_eq!(r, json!({"jsonrpc":"2.0","id":2,"result":"N0"}));
    let r = c.call(3, "bdev_get_bdevs", Some(json!({"name":"N0"})));
    assert_eq!(r["result"][0]["name"], "N0");
    // Several requests in one write, one split across writes.
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"framework_wait_init\",\"id\":4}\n  {\"jsonrpc\":\"2.0\",\"method\":\"rpc_get_");
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.send_raw(b"methods\",\"id\":5}");
    assert_eq!(c.recv().unwrap()["id"], 4);
    let r = c.recv().unwrap();
    assert_eq!(r["id"], 5);
    assert!(r["result"].as_array().unwrap().len() > 10);
    // String ids are echoed.
    let r = c.call("abc", "framework_wait_init", None);
    assert_eq!(r["id"], "abc");
}

#[test]
fn batches_and_notifications() {
    let d = Daemon::start(&[]);
    let mut c = Raw::connect(&d.sock);
    c.send(&json!([
        {"jsonrpc":"2.0","method":"bdev_null_create","params":{"name":"A","block_size":512,"num_blocks":8},"id":1},
        {"jsonrpc":"2.0","method":"bdev_null_create","params":{"name":"B","block_size":512,"num_blocks":8}},
        {"jsonrpc":"2.0","method":"no_such_method","id":3},
        {"jsonrpc":"2.0","method":"bdev_get_bdevs","id":4}
    ]));
    let r = c.recv().unwrap();
    let arr = r.as_array().unwrap();
    assert_eq!(arr.len(), 3, "the notification gets no response: {r}");
    assert_eq!(arr[0]["result"], "A");
    assert_eq!(arr[1]["error"]["code"], -32601);
    assert_eq!(
        arr[2]["result"].as_array().unwrap().len(),
        2,
        "notification B was executed"
    );
    // A successful notification is silent; a failing one is answered with id null.
    c.send(&json!({"jsonrpc":"2.0","method":"bdev_null_create","params":{"name":"C","block_size":512,"num_blocks":8}}));
    c.send(&json!({"jsonrpc":"2.0","method":"bdev_null_create","params":{"name":"C","block_size":512,"num_blocks":8}}));
    let r = c.recv().unwrap();
    assert_eq!(r["id"], serde_json::Value::Null);
    assert!(r["error"]["code"].as_i64().unwrap() < 0);
    // Empty batch and non-object requests are invalid.
    c.send(&json!([]));
    assert_eq!(c.recv().unwrap()["error"]["code"], -32600);
    c.send(&json!({"jsonrpc":"1.0","method":"x","id":9}));
    let r = c.recv().unwrap();
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(9), json!(-32600))
    );
    c.send(&json!({"jsonrpc":"2.0","method":"spdk_get_version","params":{},"id":10}));
    assert_eq!(c.recv().unwrap()["error"]["code"], -32602);
}

#[test]
fn parse_error_answers_32700_and_closes() {
    let d = Daemon::start(&[]);
    let mut c = Raw::connect(&d.sock);
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"spdk_get_version\",\"id\":1} {\"oops\": ]");
    assert_eq!(c.recv().unwrap()["id"], 1);
    let r = c.recv().unwrap();
    assert_eq!(r["error"]["code"], -32700);
    assert!(c.recv().is_none(), "connection closed after a parse error");
    // The daemon still serves new connections.
    let mut c2 = Raw::connect(&d.sock);
    assert_eq!(c2.call(1, "framework_wait_init", None)["result"], true);
}

#[test]
fn rpc_socket_is_0600_and_second_daemon_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(&[]);
    let mode = std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--empty", "-r", d.sock.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    // The first daemon still answers.
    let mut c = Raw::connect(&d.sock);
    assert_eq!(c.call(1, "framework_wait_init", None)["result"], true);
}
