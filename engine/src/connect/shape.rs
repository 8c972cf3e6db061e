//! What a serializer's items are (its describe document) and the checks
//! every item passes before a connector writes it. Pure code.

pub use hailstorm_abi::ColumnType;
use hailstorm_abi::Item;
use serde::Deserialize;

/// What a serializer's items are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Kafka records: key, value, then header (name, value) pairs.
    Kafka,
    /// Table rows, one value per column.
    Rows(Vec<Column>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub key: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    output: String,
    #[serde(default)]
    columns: Vec<ColDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColDoc {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    key: bool,
}

/// Parses a serializer's describe document.
pub fn parse_describe(doc: &str) -> Result<Shape, String> {
    let d: Doc = serde_json::from_str(doc).map_err(|e| format!("its describe document is not valid: {e}"))?;
    match d.output.as_str() {
        "kafka" if d.columns.is_empty() => Ok(Shape::Kafka),
        "kafka" => Err("its describe document gives columns for Kafka records".into()),
        "rows" => rows(d.columns),
        other => Err(format!("its describe document says output `{other}`; expected `kafka` or `rows`")),
    }
}

fn rows(cols: Vec<ColDoc>) -> Result<Shape, String> {
    let mut out: Vec<Column> = Vec::new();
    for c in cols {
        let ty = ColumnType::parse(&c.ty).ok_or_else(|| {
            let known: Vec<&str> = hailstorm_abi::COLUMN_TYPES.iter().map(|(n, _)| *n).collect();
            format!("column `{}` has type `{}`; supported: {}", c.name, c.ty, known.join(", "))
        })?;
        let simple =
            !c.name.is_empty() && c.name.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
        if !simple || c.name.len() > 63 {
            return Err(format!("column name `{}`: use 1 to 63 lowercase letters, digits and `_`", c.name));
        }
        if out.iter().any(|o| o.name == c.name) {
            return Err(format!("column `{}` is declared twice", c.name));
        }
        out.push(Column { name: c.name, ty, key: c.key });
    }
    if !out.iter().any(|c| c.key) {
        return Err("its rows declare no key column: rows are upserted by their key".into());
    }
    Ok(Shape::Rows(out))
}

/// Checks one item against `shape`; the error says what is wrong with it.
pub fn check_item(shape: &Shape, item: &Item<'_>) -> Result<(), String> {
    match shape {
        Shape::Kafka => check_record(item),
        Shape::Rows(cols) => check_row(cols, item),
    }
}

fn check_record(item: &Item<'_>) -> Result<(), String> {
    let n = item.fields.len();
    if n < 2 || !n.is_multiple_of(2) {
        return Err(format!("a Kafka record has a key, a value and header pairs: {n} fields is not that"));
    }
    for (i, pair) in item.fields.get(2..).unwrap_or(&[]).chunks(2).enumerate() {
        match pair.first().copied().flatten().map(std::str::from_utf8) {
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(format!("the name of header {i} is not UTF-8")),
            None => return Err(format!("the name of header {i} is null")),
        }
    }
    Ok(())
}

fn check_row(cols: &[Column], item: &Item<'_>) -> Result<(), String> {
    if item.fields.len() != cols.len() {
        return Err(format!("a row has {} values, not the {} columns declared", item.fields.len(), cols.len()));
    }
    for (c, f) in cols.iter().zip(&item.fields) {
        let bad = |why: String| Err(format!("column `{}` ({}): {why}", c.name, c.ty.name()));
        let Some(v) = f else {
            if c.key {
                return bad("a key column cannot be null".into());
            }
            continue;
        };
        if let Some(w) = c.ty.width().filter(|w| *w != v.len()) {
            return bad(format!("{} bytes, expected {w}", v.len()));
        }
        match c.ty {
            ColumnType::Text if std::str::from_utf8(v).is_err() => return bad("not UTF-8".into()),
            ColumnType::Text if v.contains(&0) => return bad("text cannot hold a NUL byte".into()),
            ColumnType::Jsonb if serde_json::from_slice::<serde::de::IgnoredAny>(v).is_err() => {
                return bad("not valid JSON".into())
            }
            ColumnType::Boolean if v.first().is_some_and(|b| *b > 1) => return bad("a boolean is 0 or 1".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(fields: Vec<Option<&[u8]>>) -> Item<'_> {
        Item { entry: 0, fields }
    }

    fn counts() -> Shape {
        parse_describe(r#"{"output":"rows","columns":[{"name":"word","type":"text","key":true},{"name":"count","type":"bigint"}]}"#)
            .unwrap()
    }

    #[test]
    fn describe_documents_and_their_errors() {
        assert_eq!(parse_describe(r#"{"output":"kafka"}"#).unwrap(), Shape::Kafka);
        let Shape::Rows(cols) = counts() else { panic!() };
        assert_eq!(cols[1], Column { name: "count".into(), ty: ColumnType::Bigint, key: false });
        for (doc, want) in [
            (r#"{"output":"csv"}"#, "output `csv`"),
            (r#"{"output":"rows","columns":[{"name":"a","type":"text"}]}"#, "no key column"),
            (r#"{"output":"rows","columns":[{"name":"a","type":"money","key":true}]}"#, "type `money`"),
            (r#"{"output":"rows","columns":[{"name":"A;","type":"text","key":true}]}"#, "column name `A;`"),
            ("not json", "not valid"),
        ] {
            let e = parse_describe(doc).unwrap_err();
            assert!(e.contains(want), "{doc}: {e}");
        }
    }

    #[test]
    fn rows_are_checked_column_by_column() {
        let s = counts();
        let n = 42i64.to_be_bytes();
        assert!(check_item(&s, &item(vec![Some(b"the"), Some(&n)])).is_ok());
        let e = check_item(&s, &item(vec![Some(b"the"), Some(&[0, 0, 0, 42])])).unwrap_err();
        assert_eq!(e, "column `count` (bigint): 4 bytes, expected 8");
        let e = check_item(&s, &item(vec![None, Some(&n)])).unwrap_err();
        assert!(e.contains("key column cannot be null"), "{e}");
        let e = check_item(&s, &item(vec![Some(&[0xff]), Some(&n)])).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = check_item(&s, &item(vec![Some(b"x")])).unwrap_err();
        assert!(e.contains("1 values, not the 2 columns"), "{e}");
        assert!(check_item(&s, &item(vec![Some(b"x"), None])).is_ok());
    }

    #[test]
    fn records_have_a_key_a_value_and_named_headers() {
        assert!(check_item(&Shape::Kafka, &item(vec![None, Some(b"v"), Some(b"h"), None])).is_ok());
        assert!(check_item(&Shape::Kafka, &item(vec![Some(b"k")])).is_err());
        assert!(check_item(&Shape::Kafka, &item(vec![Some(b"k"), Some(b"v"), None, Some(b"x")])).is_err());
    }

    proptest! {
        /// Whatever the fields, checking never panics, and a row of the
        /// right widths passes.
        #[test]
        fn checks_never_panic(fields in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)), 0..5),
                              word in "[a-z]{1,8}", n in any::<i64>()) {
            let f: Vec<Option<&[u8]>> = fields.iter().map(|f| f.as_deref()).collect();
            let _ = check_item(&counts(), &item(f.clone()));
            let _ = check_item(&Shape::Kafka, &item(f));
            let nb = n.to_be_bytes();
            prop_assert!(check_item(&counts(), &item(vec![Some(word.as_bytes()), Some(&nb)])).is_ok());
        }
    }
}
