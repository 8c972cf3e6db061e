//! Serializers: shape the changed entries a connector sink writes (ABI.md §7a)
//! into Kafka records or table rows. The host owns the connection and the
//! delivery guarantee; a serializer is pure, like a deserializer.

pub use hailstorm_abi::ColumnType;
use hailstorm_abi::{read_serialize_input, BatchWriter};
use serde_json::json;

use crate::Init;

/// What a serializer's items are.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Kafka records: key, value and headers.
    Kafka,
    /// Rows of a table with these columns (at least one of them a key).
    Rows(Vec<Column>),
}

/// A column of the rows a serializer writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// Part of the table's primary key: rows replace the row with the same key.
    pub key: bool,
}

impl Column {
    pub fn new(name: &str, ty: ColumnType, key: bool) -> Column {
        Column { name: name.to_owned(), ty, key }
    }
}

/// One value of a row, of its column's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Text(&'a str),
    Bytea(&'a [u8]),
    Bigint(i64),
    Integer(i32),
    Smallint(i16),
    Double(f64),
    Real(f32),
    Boolean(bool),
    /// JSON text.
    Jsonb(&'a str),
}

/// One changed entry: its value at `round`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The input bolt.
    pub input: &'a str,
    /// The bolt instance it comes from.
    pub instance: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The complete round the value is from.
    pub round: u64,
}

/// The items a serializer writes for a batch of entries.
#[derive(Debug, Default)]
pub struct Items {
    w: BatchWriter,
    entry: u32,
}

impl Items {
    /// A Kafka record (`None`: a null key or value), with headers.
    pub fn record(&mut self, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) {
        let n = u32::try_from(2 + 2 * headers.len()).unwrap_or(u32::MAX);
        self.w.u32(self.entry).u32(n).field(key).field(value);
        for (name, v) in headers {
            self.w.field(Some(name.as_bytes())).field(Some(v));
        }
        self.w.end_item();
    }

    /// A row: one value per declared column, in their order.
    pub fn row(&mut self, values: &[Value<'_>]) {
        let n = u32::try_from(values.len()).unwrap_or(u32::MAX);
        self.w.u32(self.entry).u32(n);
        for v in values {
            let mut buf = [0u8; 8];
            let f: Option<&[u8]> = match v {
                Value::Null => None,
                Value::Text(s) | Value::Jsonb(s) => Some(s.as_bytes()),
                Value::Bytea(b) => Some(b),
                Value::Bigint(i) => Some(put(&mut buf, &i.to_be_bytes())),
                Value::Integer(i) => Some(put(&mut buf, &i.to_be_bytes())),
                Value::Smallint(i) => Some(put(&mut buf, &i.to_be_bytes())),
                Value::Double(x) => Some(put(&mut buf, &x.to_be_bytes())),
                Value::Real(x) => Some(put(&mut buf, &x.to_be_bytes())),
                Value::Boolean(b) => Some(put(&mut buf, &[u8::from(*b)])),
            };
            self.w.field(f);
        }
        self.w.end_item();
    }
}

fn put<'b>(buf: &'b mut [u8; 8], b: &[u8]) -> &'b [u8] {
    let n = b.len().min(8);
    buf[..n].copy_from_slice(&b[..n]);
    &buf[..n]
}

/// A connector sink's serializer. Export one with [`serializer!`](crate::serializer).
///
/// It must be pure: the same entry always gives the same items, because a
/// round is sent again after a failure.
pub trait Serializer: Sized {
    /// Builds the serializer from its init document.
    fn init(init: &Init) -> Result<Self, String>;

    /// What its items are; asked once, after `init`.
    fn output(&self) -> Output;

    /// Writes the items of one entry ([`Items::record`] or [`Items::row`], any
    /// number of them). An error names the entry and stops the round.
    fn serialize(&mut self, entry: &Entry<'_>, out: &mut Items) -> Result<(), String>;
}

/// The byte-level logic behind a serializer's exports, usable on the host
/// to test a serializer exactly as the engine drives it.
#[derive(Debug)]
pub struct SerializerRuntime<S> {
    user: Option<S>,
    out: Items,
    doc: Vec<u8>,
}

impl<S: Serializer> Default for SerializerRuntime<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Serializer> SerializerRuntime<S> {
    pub fn new() -> Self {
        SerializerRuntime { user: None, out: Items::default(), doc: Vec::new() }
    }

    /// `hailstorm_init`.
    pub fn init(&mut self, doc: &[u8]) -> Result<(), String> {
        if self.user.is_some() {
            return Err(crate::ALREADY_INITIALIZED.to_owned());
        }
        self.user = Some(S::init(&Init::parse(doc)?)?);
        Ok(())
    }

    /// `hailstorm_describe`: the JSON document of ABI.md §7a.
    pub fn describe(&mut self) -> Result<&[u8], String> {
        let user = self.user.as_ref().ok_or(crate::NOT_INITIALIZED)?;
        let doc = match user.output() {
            Output::Kafka => json!({ "output": "kafka" }),
            Output::Rows(cols) => {
                let cols: Vec<_> =
                    cols.iter().map(|c| json!({ "name": c.name, "type": c.ty.name(), "key": c.key })).collect();
                json!({ "output": "rows", "columns": cols })
            }
        };
        self.doc = doc.to_string().into_bytes();
        Ok(&self.doc)
    }

    /// `hailstorm_serialize`: a round's changes in, an output batch out.
    pub fn serialize(&mut self, buf: &[u8]) -> Result<&[u8], String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        let (round, changes) = read_serialize_input(buf).map_err(|e| format!("serializer input: {e}"))?;
        let input = std::str::from_utf8(changes.input).map_err(|_| "serializer input: the input name is not UTF-8")?;
        self.out.w.clear();
        for (i, (key, value)) in changes.entries.iter().enumerate() {
            self.out.entry = u32::try_from(i).map_err(|_| "too many entries")?;
            let entry = Entry { input, instance: changes.instance, key, value, round };
            user.serialize(&entry, &mut self.out).map_err(|e| format!("entry {i} of the batch: {e}"))?;
        }
        Ok(self.out.w.as_bytes())
    }
}
