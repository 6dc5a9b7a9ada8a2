//! JSON-RPC 2.0 with SPDK's framing: a stream of JSON values with no delimiter, one response
//! object per line, batches answered as arrays, notifications answered only on error.
//!
//! This module is transport-free: [`StreamDecoder`] turns bytes into values and
//! [`handle_value`] turns one value (request or batch) into the bytes to send back.

use serde_json::{json, Map, Value};

/// Largest amount of buffered, not yet parsed request data (SPDK: 256 KiB receive buffer).
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// Largest number of requests in one batch (SPDK: 8192 values per request).
pub const MAX_BATCH: usize = 8192;

/// Standard JSON-RPC error code: invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Standard JSON-RPC error code: not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// Standard JSON-RPC error code: unknown method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Standard JSON-RPC error code: bad parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Standard JSON-RPC error code: internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// SPDK's code for a method called in the wrong framework state (startup vs runtime).
pub const INVALID_STATE: i64 = -1;

/// An error answered to a JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// Human readable message.
    pub message: String,
}

impl RpcError {
    /// Error with an arbitrary code.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// -32602 with a message (which should name the offending parameter).
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
    /// -32603 with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }
    /// -32601 for `method`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }
}

/// What the dispatcher gets for one well-formed request.
pub trait Dispatch {
    /// Run `method` with `params` (`None` when absent or null).
    fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError>;

    /// Called on the thread that ran [`Dispatch::call`] once the response to the request
    /// (or batch) has been written, or has failed to be written, or there was none (a
    /// notification): for actions that must follow the answer, such as
    /// `spdk_kill_instance`'s signal. Default: nothing.
    fn responded(&self) {}
}

/// Result of feeding bytes to a [`StreamDecoder`].
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A complete JSON value.
    Value(Value),
    /// Invalid JSON (or too much buffered data): answer -32700 and close.
    ParseError,
}

/// Incremental decoder for a stream of concatenated JSON values.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
}

impl StreamDecoder {
    /// New, empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes and return every complete value now available (in order).
    /// After a [`Decoded::ParseError`] the caller must close the connection.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Decoded> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0usize;
        {
            let rest = self.buf.get(consumed..).unwrap_or(&[]);
            let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
            loop {
                match stream.next() {
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                    Some(Ok(v)) => {
                        out.push(Decoded::Value(v));
                        consumed = stream.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => {
                        // Incomplete value: keep the tail for the next read.
                        break;
                    }
                    Some(Err(_)) => {
                        out.push(Decoded::ParseError);
                        self.buf.clear();
                        return out;
                    }
                }
            }
        }
        self.buf.drain(..consumed.min(self.buf.len()));
        if self.buf.len() > MAX_PENDING_BYTES {
            out.push(Decoded::ParseError);
            self.buf.clear();
        }
        out
    }

    /// Whether only whitespace (or nothing) is pending.
    pub fn is_idle(&self) -> bool {
        self.buf.iter().all(u8::is_ascii_whitespace)
    }
}

/// Build a success response.
pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Build an error response.
pub fn error_response(id: &Value, err: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": err.code, "message": err.message}})
}

/// The -32700 response sent before closing a connection.
pub fn parse_error_response() -> Value {
    error_response(&Value::Null, &RpcError::new(PARSE_ERROR, "Parse error"))
}

/// Handle one top-level value (a request or a batch). Returns the response value to send,
/// or `None` when nothing is to be sent (notifications that succeeded).
pub fn handle_value(value: Value, dispatch: &dyn Dispatch) -> Option<Value> {
    match value {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return Some(error_response(
                    &Value::Null,
                    &RpcError::new(INVALID_REQUEST, "Invalid request"),
                ));
            }
            let responses: Vec<Value> = items
                .into_iter()
                .filter_map(|item| handle_request(item, dispatch))
                .collect();
            if responses.is_empty() {
                None
            } else {
                Some(Value::Array(responses))
            }
        }
        other => handle_request(other, dispatch),
    }
}

fn invalid_request() -> RpcError {
    RpcError::new(INVALID_REQUEST, "Invalid request")
}

/// Validated request envelope.
struct Envelope {
    id: Option<Value>,
    method: String,
    params: Option<Value>,
}

fn validate(obj: Map<String, Value>) -> Result<Envelope, (Value, RpcError)> {
    // The id is echoed even when another field is wrong, if it is itself well-formed.
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => return Err((Value::Null, invalid_request())),
    };
    let echo = id.clone().unwrap_or(Value::Null);
    for key in obj.keys() {
        if !matches!(key.as_str(), "jsonrpc" | "method" | "params" | "id") {
            return Err((echo, invalid_request()));
        }
    }
    match obj.get("jsonrpc") {
        None => {}
        Some(Value::String(s)) if s == "2.0" => {}
        Some(_) => return Err((echo, invalid_request())),
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err((echo, invalid_request())),
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p.clone()),
        Some(_) => return Err((echo, invalid_request())),
    };
    Ok(Envelope { id, method, params })
}

fn handle_request(value: Value, dispatch: &dyn Dispatch) -> Option<Value> {
    let Value::Object(obj) = value else {
        return Some(error_response(&Value::Null, &invalid_request()));
    };
    let env = match validate(obj) {
        Ok(env) => env,
        Err((id, err)) => return Some(error_response(&id, &err)),
    };
    let result = dispatch.call(&env.method, env.params.as_ref());
    match (env.id, result) {
        (Some(id), Ok(v)) => Some(response(&id, v)),
        (None, Ok(_)) => None,
        (Some(id), Err(e)) => Some(error_response(&id, &e)),
        // SPDK still answers errors to notifications, with a null id.
        (None, Err(e)) => Some(error_response(&Value::Null, &e)),
    }
}

/// Serialize a response value the way the server writes it: compact JSON and a newline.
pub fn frame(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Dispatch for Echo {
        fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
            match method {
                "echo" => Ok(params.cloned().unwrap_or(Value::Null)),
                "fail" => Err(RpcError::invalid_params("name: bad")),
                m => Err(RpcError::method_not_found(m)),
            }
        }
    }

    #[test]
    fn decoder_splits_concatenated_values_and_keeps_partial_tail() {
        let mut d = StreamDecoder::new();
        let out = d.feed(b"{\"a\":1}\n{\n  \"b\": 2\n}{\"c\"");
        assert_eq!(
            out,
            vec![
                Decoded::Value(json!({"a":1})),
                Decoded::Value(json!({"b":2}))
            ]
        );
        assert!(!d.is_idle());
        let out = d.feed(b": 3}");
        assert_eq!(out, vec![Decoded::Value(json!({"c":3}))]);
        assert!(d.is_idle());
    }

    #[test]
    fn decoder_reports_parse_error() {
        let mut d = StreamDecoder::new();
        let out = d.feed(b"{\"a\":1} {bad json}");
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], Decoded::ParseError);
    }

    #[test]
    fn decoder_rejects_oversized_pending_value() {
        let mut d = StreamDecoder::new();
        let mut big = b"[\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_PENDING_BYTES + 1));
        assert_eq!(d.feed(&big), vec![Decoded::ParseError]);
    }

    #[test]
    fn request_gets_result_with_same_id() {
        let r = handle_value(
            json!({"jsonrpc":"2.0","id":7,"method":"echo","params":{"x":1}}),
            &Echo,
        );
        assert_eq!(r, Some(json!({"jsonrpc":"2.0","id":7,"result":{"x":1}})));
    }

    #[test]
    fn notification_success_is_silent_but_error_is_sent_with_null_id() {
        assert_eq!(handle_value(json!({"method":"echo"}), &Echo), None);
        let r = handle_value(json!({"method":"fail"}), &Echo).unwrap();
        assert_eq!(r["id"], Value::Null);
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
    }

    #[test]
    fn invalid_envelopes_get_32600() {
        for bad in [
            json!(5),
            json!({"jsonrpc":"1.0","id":1,"method":"echo"}),
            json!({"id":1}),
            json!({"id":1,"method":3}),
            json!({"id":1,"method":"echo","params":5}),
            json!({"id":{},"method":"echo"}),
            json!({"id":1,"method":"echo","extra":1}),
            json!([]),
        ] {
            let r = handle_value(bad.clone(), &Echo).unwrap();
            assert_eq!(r["error"]["code"], INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn batch_answers_array_without_notifications() {
        let r = handle_value(
            json!([
                {"id":1,"method":"echo","params":[1]},
                {"method":"echo"},
                {"id":2,"method":"nope"}
            ]),
            &Echo,
        )
        .unwrap();
        let arr = r.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["result"], json!([1]));
        assert_eq!(arr[1]["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(handle_value(json!([{"method":"echo"}]), &Echo), None);
    }

    proptest::proptest! {
        /// However the byte stream is split into reads, the same values come out in order.
        #[test]
        fn decoder_is_split_invariant(ids in proptest::collection::vec(0u32..1000, 1..8),
                                      cuts in proptest::collection::vec(0usize..4000, 0..10)) {
            let values: Vec<Value> = ids
                .iter()
                .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"m","params":{"s":"a}b{c\\\"","n":[1,2.5,null]}}))
                .collect();
            let mut bytes = Vec::new();
            for v in &values {
                bytes.extend(serde_json::to_vec_pretty(v).unwrap());
                bytes.extend(b" \n");
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut d = StreamDecoder::new();
            let mut out = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                out.extend(d.feed(&bytes[prev..c]));
                prev = c;
            }
            let expected: Vec<Decoded> = values.into_iter().map(Decoded::Value).collect();
            proptest::prop_assert_eq!(out, expected);
            proptest::prop_assert!(d.is_idle());
        }

        /// Arbitrary bytes never panic the decoder or the request handler.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut d = StreamDecoder::new();
            for item in d.feed(&bytes) {
                if let Decoded::Value(v) = item {
                    let _ = handle_value(v, &Echo);
                }
            }
        }
    }

    #[test]
    fn frame_is_newline_terminated() {
        let f = frame(&json!({"a":1}));
        assert_eq!(f.last(), Some(&b'\n'));
    }
}
