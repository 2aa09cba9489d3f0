//! Free-form JSON objects (batch metadata, error details).

use serde_json::{Map, Value};

use super::InvalidValue;

/// Largest object, in bytes of compact JSON.
pub(crate) const MAX_JSON_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects and arrays.
pub(crate) const MAX_JSON_DEPTH: usize = 32;

/// Bytes of `value` as compact JSON, counted without writing them out.
pub(crate) fn json_len(value: &impl serde::Serialize) -> Result<usize, serde_json::Error> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    Ok(counter.0)
}

/// A JSON object that PostgreSQL's `jsonb` accepts as is: within
/// [`MAX_JSON_BYTES`] and [`MAX_JSON_DEPTH`], finite numbers, no NUL in any
/// key or string.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct JsonObject(Map<String, Value>);

impl JsonObject {
    /// Accepts `object` if it fits the limits above.
    pub(crate) fn parse(object: Map<String, Value>) -> Result<Self, InvalidValue> {
        check_object(&object, 1)?;
        let size = json_len(&object)
            .map_err(|e| InvalidValue(format!("is not representable as JSON: {e}")))?;
        if size > MAX_JSON_BYTES {
            return Err(InvalidValue(format!(
                "is {size} bytes as JSON; at most {MAX_JSON_BYTES} are allowed"
            )));
        }
        Ok(Self(object))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub(crate) fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// Equality as JSON values, where `1` and `1.0` are the same number:
    /// protobuf's Struct carries every number as a double, while `jsonb` hands
    /// back integers as integers.
    pub(crate) fn same_as(&self, other: &Map<String, Value>) -> bool {
        same_objects(&self.0, other)
    }
}

fn same_objects(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(key, value)| b.get(key).is_some_and(|other| same_values(value, other)))
}

fn same_values(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_values(x, y))
        }
        (Value::Object(x), Value::Object(y)) => same_objects(x, y),
        _ => a == b,
    }
}

fn check_object(object: &Map<String, Value>, depth: usize) -> Result<(), InvalidValue> {
    if depth > MAX_JSON_DEPTH {
        return Err(InvalidValue(format!(
            "is nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    for (key, value) in object {
        if key.contains('\0') {
            return Err(InvalidValue("has a key containing NUL".into()));
        }
        check_value(value, depth)?;
    }
    Ok(())
}

fn check_value(value: &Value, depth: usize) -> Result<(), InvalidValue> {
    match value {
        Value::String(s) if s.contains('\0') => {
            Err(InvalidValue("has a string containing NUL".into()))
        }
        Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => {
            Err(InvalidValue("has a number that is not finite".into()))
        }
        Value::Object(object) => check_object(object, depth + 1),
        Value::Array(items) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(InvalidValue(format!(
                    "is nested deeper than {MAX_JSON_DEPTH} levels"
                )));
            }
            items
                .iter()
                .try_for_each(|item| check_value(item, depth + 1))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn accepts_ordinary_metadata() {
        let parsed = JsonObject::parse(object(json!({"smart_mode": true, "n": [1, 2.5, null]})));
        assert!(parsed.is_ok());
    }

    #[test]
    fn integers_and_doubles_of_equal_value_are_the_same() {
        let request =
            JsonObject::parse(object(json!({"n": 1.0, "a": [2.0], "o": {"x": "y"}}))).unwrap();
        assert!(request.same_as(&object(json!({"n": 1, "a": [2], "o": {"x": "y"}}))));
        assert!(!request.same_as(&object(json!({"n": 1, "a": [3], "o": {"x": "y"}}))));
        assert!(!request.same_as(&object(json!({"n": 1, "a": [2]}))));
    }

    #[test]
    fn rejects_nul_anywhere() {
        assert!(JsonObject::parse(object(json!({"a\u{0}": 1}))).is_err());
        assert!(JsonObject::parse(object(json!({"a": ["x\u{0}"]}))).is_err());
    }

    #[test]
    fn rejects_deep_nesting_and_large_objects() {
        let mut deep = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = json!({ "k": deep });
        }
        assert!(JsonObject::parse(object(deep.clone())).is_ok());
        assert!(JsonObject::parse(object(json!({ "k": deep }))).is_err());
        let big = "x".repeat(MAX_JSON_BYTES);
        assert!(JsonObject::parse(object(json!({ "k": big }))).is_err());
    }
}
