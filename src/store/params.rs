//! Statement parameters by name: each statement's parameters are the fields
//! of one struct, declared with the SQL that refers to them as `:field`
//! ([`statement!`]). The placeholders are numbered and the parameter types
//! declared from that one list while compiling, so a parameter bound in the
//! wrong place, left out, misspelt or of the wrong type does not compile.
//! [`super::connection`] still checks the count, as a backstop.

use jiff::Timestamp;
use tokio_postgres::types::{Json, ToSql, Type};

use super::sql::Statement;

/// A statement with the values to run it with.
pub(crate) trait Bind {
    fn statement(&self) -> Statement<'_>;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)>;
}

/// A Rust type bound as a statement parameter, with the PostgreSQL type it
/// is declared as.
pub(crate) trait Param: ToSql + Sync {
    const TYPE: Type;
}

macro_rules! params {
    ($($rust:ty => $pg:ident),* $(,)?) => {
        $(impl Param for $rust { const TYPE: Type = Type::$pg; })*
    };
}

params! {
    &str => TEXT,
    bool => BOOL,
    i32 => INT4,
    i64 => INT8,
    f64 => FLOAT8,
    Timestamp => TIMESTAMPTZ,
    &[u8] => BYTEA,
    &[&str] => TEXT_ARRAY,
    &[String] => TEXT_ARRAY,
}

impl<T: Param> Param for Option<T> {
    const TYPE: Type = T::TYPE;
}

impl<T: serde::Serialize + std::fmt::Debug + Sync> Param for Json<T> {
    const TYPE: Type = Type::JSONB;
}

/// Declares a statement: a struct of its parameters, and its SQL, which
/// names them `:field` (PostgreSQL's `::type` casts are left alone, as is
/// everything inside quotes and comments). An unknown name, an unused field
/// or a `$n` left in the SQL is a compile error.
macro_rules! statement {
    (
        $(#[$doc:meta])*
        $vis:vis struct $Params:ident $(<$lt:lifetime>)? { $($field:ident: $type:ty),* $(,)? }
        = $sql:expr;
    ) => {
        $(#[$doc])*
        $vis struct $Params $(<$lt>)? { $(pub(crate) $field: $type),* }

        impl $(<$lt>)? $Params $(<$lt>)? {
            pub(crate) const STATEMENT: $crate::store::sql::Statement<'static> = {
                const NAMES: &[&str] = &[$(stringify!($field)),*];
                const LENGTH: usize = $crate::store::params::numbered_length($sql, NAMES);
                const TEXT: [u8; LENGTH] = $crate::store::params::numbered($sql, NAMES);
                $crate::store::sql::Statement {
                    text: $crate::store::params::utf8(&TEXT),
                    types: &[$(<$type as $crate::store::params::Param>::TYPE),*],
                }
            };
        }

        impl $(<$lt>)? $crate::store::params::Bind for $Params $(<$lt>)? {
            fn statement(&self) -> $crate::store::sql::Statement<'_> {
                Self::STATEMENT
            }

            fn values(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
                vec![$(&self.$field),*]
            }
        }
    };
}
pub(crate) use statement;

/// How long `sql` is once every `:name` is numbered after `names`.
pub(crate) const fn numbered_length(sql: &str, names: &[&str]) -> usize {
    number(sql.as_bytes(), names, &mut [])
}

/// `sql` with every `:name` replaced by `$n`, `n` being the name's place in
/// `names` (from 1); `N` is [`numbered_length`].
pub(crate) const fn numbered<const N: usize>(sql: &str, names: &[&str]) -> [u8; N] {
    let mut text = [0; N];
    number(sql.as_bytes(), names, &mut text);
    text
}

pub(crate) const fn utf8(text: &[u8]) -> &str {
    match std::str::from_utf8(text) {
        Ok(text) => text,
        Err(_) => panic!("a numbered statement is not UTF-8"),
    }
}

/// The longest parameter list a statement may declare.
const MAX_PARAMS: usize = 32;

/// Writes `sql` numbered into `out` (when it is long enough: an empty one
/// only measures); returns the numbered length.
const fn number(sql: &[u8], names: &[&str], out: &mut [u8]) -> usize {
    assert!(names.len() <= MAX_PARAMS, "too many parameters");
    let mut used = [false; MAX_PARAMS];
    let (mut read, mut written) = (0, 0);
    while read < sql.len() {
        let byte = sql[read];
        let next = if read + 1 < sql.len() {
            sql[read + 1]
        } else {
            0
        };
        let copy_until = if byte == b'\'' {
            let mut end = read + 1;
            while end < sql.len() && sql[end] != b'\'' {
                end += 1;
            }
            end + 1
        } else if byte == b'-' && next == b'-' {
            let mut end = read;
            while end < sql.len() && sql[end] != b'\n' {
                end += 1;
            }
            end
        } else if byte == b':' && next == b':' {
            read + 2
        } else if byte == b':' && is_name_start(next) {
            let start = read + 1;
            let mut end = start;
            while end < sql.len() && is_name(sql[end]) {
                end += 1;
            }
            let place = position(names, sql, start, end);
            used[place] = true;
            written = write_placeholder(out, written, place + 1);
            read = end;
            continue;
        } else {
            assert!(
                byte != b'$',
                "a statement numbers its own placeholders: write :name"
            );
            read + 1
        };
        while read < copy_until && read < sql.len() {
            if written < out.len() {
                out[written] = sql[read];
            }
            written += 1;
            read += 1;
        }
    }
    let mut place = 0;
    while place < names.len() {
        assert!(
            used[place],
            "a declared parameter is not used by the statement"
        );
        place += 1;
    }
    written
}

/// Writes `$number` at `at`; returns where it ends.
const fn write_placeholder(out: &mut [u8], mut at: usize, number: usize) -> usize {
    let digits: &[u8] = if number < 10 {
        &[b'0' + number as u8]
    } else {
        &[b'0' + (number / 10) as u8, b'0' + (number % 10) as u8]
    };
    let mut index = 0;
    while index <= digits.len() {
        let byte = if index == 0 { b'$' } else { digits[index - 1] };
        if at < out.len() {
            out[at] = byte;
        }
        at += 1;
        index += 1;
    }
    at
}

/// The place in `names` of `sql[start..end]`.
const fn position(names: &[&str], sql: &[u8], start: usize, end: usize) -> usize {
    let mut place = 0;
    while place < names.len() {
        let name = names[place].as_bytes();
        if name.len() == end - start {
            let mut index = 0;
            while index < name.len() && name[index] == sql[start + index] {
                index += 1;
            }
            if index == name.len() {
                return place;
            }
        }
        place += 1;
    }
    panic!("the statement names a parameter its struct does not declare")
}

const fn is_name_start(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte == b'_'
}

const fn is_name(byte: u8) -> bool {
    is_name_start(byte) || byte.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_numbers_and_casts_quotes_and_comments_stay() {
        const SQL: &str = "SELECT :b::text, ':a', :a -- :b\n, 'x:y'::jsonb, :b";
        const NAMES: &[&str] = &["a", "b"];
        const TEXT: [u8; numbered_length(SQL, NAMES)] = numbered(SQL, NAMES);
        assert_eq!(
            utf8(&TEXT),
            "SELECT $2::text, ':a', $1 -- :b\n, 'x:y'::jsonb, $2"
        );
    }

    #[test]
    fn two_digit_places_are_numbered() {
        let names: Vec<String> = (0..12).map(|n| format!("p{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let sql = names
            .iter()
            .map(|n| format!(":{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut text = vec![0; numbered_length(&sql, &names)];
        number(sql.as_bytes(), &names, &mut text);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "$1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12"
        );
    }
}
