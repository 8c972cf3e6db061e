//! PostgreSQL's binary COPY format for a chunk of rows, and the statements
//! that stage and upsert them.

use hailstorm_abi::Item;

use super::STAGE;
use crate::connect::shape::{Column, ColumnType};

/// A quoted identifier.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn column_list(cols: &[Column]) -> String {
    cols.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ")
}

/// The COPY into the staging table, and the upsert from it into `table`.
pub(super) fn statements(table: &str, cols: &[Column]) -> (String, String) {
    let list = column_list(cols);
    let keys: Vec<String> = cols.iter().filter(|c| c.key).map(|c| quote(&c.name)).collect();
    let sets: Vec<String> =
        cols.iter().filter(|c| !c.key).map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name))).collect();
    let action = if sets.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", sets.join(", ")) };
    let copy = format!("COPY {STAGE} ({list}) FROM STDIN (FORMAT binary)");
    let upsert = format!(
        "INSERT INTO {} ({list}) SELECT {list} FROM {STAGE} ON CONFLICT ({}) DO {action}; TRUNCATE {STAGE}",
        quote(table),
        keys.join(", ")
    );
    (copy, upsert)
}

/// The binary COPY stream of `items` (checked rows of `cols`).
pub(super) fn binary(items: &[Item<'_>], cols: &[Column]) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + items.len() * 32);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for item in items {
        let n = i16::try_from(item.fields.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for (f, c) in item.fields.iter().zip(cols) {
            match f {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    let jsonb = c.ty == ColumnType::Jsonb;
                    let len = i32::try_from(v.len() + usize::from(jsonb)).unwrap_or(i32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    if jsonb {
                        out.push(1); // jsonb's binary format version
                    }
                    out.extend_from_slice(v);
                }
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_the_binary_stream() {
        let cols = vec![
            Column { name: "word".into(), ty: ColumnType::Text, key: true },
            Column { name: "count".into(), ty: ColumnType::Bigint, key: false },
        ];
        let (copy, upsert) = statements("word_counts", &cols);
        assert_eq!(copy, r#"COPY hailstorm_stage ("word", "count") FROM STDIN (FORMAT binary)"#);
        assert!(upsert.contains(r#"ON CONFLICT ("word") DO UPDATE SET "count" = EXCLUDED."count""#), "{upsert}");
        let n = 7i64.to_be_bytes();
        let b = binary(&[Item { entry: 0, fields: vec![Some(b"a"), Some(&n)] }], &cols);
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\0\x02\0\0\0\x01a\0\0\0\x08".to_vec();
        want.extend_from_slice(&n);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(b, want);
    }
}
