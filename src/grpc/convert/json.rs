//! `google.protobuf.Struct` to JSON and back.

use prost_types::{ListValue, Struct, Value as ProtoValue, value::Kind};
use serde_json::{Map, Number, Value};

use crate::domain::InvalidValue;

/// The JSON object a `Struct` holds; NaN and infinities are refused.
pub(super) fn struct_to_json(value: Struct) -> Result<Map<String, Value>, InvalidValue> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| Ok((key, value_to_json(value)?)))
        .collect()
}

fn value_to_json(value: ProtoValue) -> Result<Value, InvalidValue> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => Value::Number(
            Number::from_f64(n)
                .ok_or_else(|| InvalidValue("has a number that is not finite".into()))?,
        ),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A JSON object as a `Struct`.
pub(super) fn json_to_struct(map: Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // Struct numbers are doubles; integers beyond 2^53 lose precision,
        // as they do in every JSON consumer that reads them as numbers.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    ProtoValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_rejected() {
        let value = ProtoValue {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert!(value_to_json(value).is_err());
    }
}
