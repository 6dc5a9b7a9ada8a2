//! Strict decoding of JSON-RPC params into typed structs, with -32602 errors that name the
//! offending parameter (path), like SPDK's `spdk_json_decode_object`.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::jsonrpc::RpcError;

/// Decode `params` (absent, null, `{}` or `[]` mean "no parameters") into `T`.
/// Unknown keys are rejected when `T` uses `#[serde(deny_unknown_fields)]`.
pub fn decode<T: DeserializeOwned>(params: Option<&Value>) -> Result<T, RpcError> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(o)) => Value::Object(o.clone()),
        Some(Value::Array(a)) if a.is_empty() => Value::Object(Map::new()),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "Invalid parameters: params must be an object",
            ))
        }
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            RpcError::invalid_params(format!("Invalid parameters: {inner}"))
        } else {
            RpcError::invalid_params(format!("Invalid parameters: {path}: {inner}"))
        }
    })
}

/// Reject any params at all (SPDK: `spdk_get_version` with `{}` is an error).
pub fn none(method: &str, params: Option<&Value>) -> Result<(), RpcError> {
    match params {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(RpcError::invalid_params(format!(
            "Invalid parameters: {method} requires no parameters"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        name: String,
        #[serde(default)]
        size: u32,
    }

    #[test]
    fn unknown_missing_and_wrong_type_name_the_param() {
        let e = decode::<P>(Some(&json!({"name":"a","bogus":1}))).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = decode::<P>(Some(&json!({}))).unwrap_err();
        assert!(e.message.contains("name"), "{}", e.message);
        let e = decode::<P>(Some(&json!({"name":"a","size":"x"}))).unwrap_err();
        assert!(e.message.contains("size"), "{}", e.message);
        let e = decode::<P>(Some(&json!({"name":"a","size":-1}))).unwrap_err();
        assert!(e.message.contains("size"), "{}", e.message);
        assert_eq!(e.code, -32602);
        assert!(decode::<P>(Some(&json!({"name":"a"}))).is_ok());
        assert!(decode::<P>(Some(&json!([1]))).is_err());
    }

    #[test]
    fn none_rejects_empty_object() {
        assert!(none("m", None).is_ok());
        assert!(none("m", Some(&json!({}))).is_err());
    }
}
