//! Unknown fields, reported without ending the parse.
//!
//! The raw types reject unknown fields (`deny_unknown_fields`, which is also what makes the
//! exported schema say `additionalProperties: false`). Left to serde, the first unknown field
//! would end the whole file's parse, and the problems after it would only show once it is
//! fixed. So each manifest struct is read through [`Checked`]: it takes the struct's field
//! names from the struct itself, passes the known fields on, and records each unknown one
//! (with its location) for the loader to report while the rest of the document is read and
//! checked. Outside [`collecting`], an unknown field is the error it always was.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer};
use serde::de::{MapAccess, Visitor};

use crate::spanned::{Loc, Spanned};

/// A field no struct of that place has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unknown {
    pub field: String,
    pub loc: Loc,
    /// The fields that place has, for "did you mean".
    pub expected: &'static [&'static str],
}

thread_local! {
    static FOUND: RefCell<Option<Vec<Unknown>>> = const { RefCell::new(None) };
}

/// Runs `parse`, collecting the unknown fields it meets instead of failing on them.
pub(crate) fn collecting<R>(parse: impl FnOnce() -> R) -> (R, Vec<Unknown>) {
    let outer = FOUND.with(|found| found.replace(Some(Vec::new())));
    let result = parse();
    let unknown = FOUND.with(|found| found.replace(outer)).unwrap_or_default();
    (result, unknown)
}

/// Records `field` as unknown where `expected` are the fields, or fails on it when nothing
/// collects.
pub(crate) fn record<E: de::Error>(
    field: Spanned<String>,
    expected: &'static [&'static str],
) -> Result<(), E> {
    FOUND.with(|found| match found.borrow_mut().as_mut() {
        Some(unknown) => {
            unknown.push(Unknown {
                field: field.value,
                loc: field.loc,
                expected,
            });
            Ok(())
        }
        None => Err(E::unknown_field(&field.value, expected)),
    })
}

/// A manifest struct whose unknown fields are recorded rather than fatal.
pub(crate) struct Checked<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = field_names::<T>();
        deserializer
            .deserialize_map(StructVisitor {
                fields,
                of: PhantomData,
            })
            .map(Checked)
    }
}

/// `Option<Spanned<T>>` read through [`Checked`], for a field holding an optional struct
/// (`#[serde(default, deserialize_with = "checked")]`).
pub(crate) fn checked<'de, D, T>(deserializer: D) -> Result<Option<Spanned<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = Option::<Spanned<Checked<T>>>::deserialize(deserializer)?;
    Ok(value.map(unwrap))
}

/// A spanned checked struct as the struct.
pub(crate) fn unwrap<T>(spanned: Spanned<Checked<T>>) -> Spanned<T> {
    Spanned {
        value: spanned.value.0,
        loc: spanned.loc,
    }
}

struct StructVisitor<T> {
    fields: &'static [&'static str],
    of: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for StructVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a mapping with fields {}", self.fields.join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(KnownFields {
            map,
            fields: self.fields,
        }))
    }
}

/// A mapping with its unknown keys (and their values) taken out and recorded.
struct KnownFields<A> {
    map: A,
    fields: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for KnownFields<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<Spanned<String>>()? {
            if self.fields.contains(&key.value.as_str()) {
                return seed.deserialize(key.value.into_deserializer()).map(Some);
            }
            record(key, self.fields)?;
            self.map.next_value::<IgnoredAny>()?;
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// The field names a derived struct passes to `deserialize_struct`, asked of the struct itself
/// so that they cannot drift from it (renames included).
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only notes the field names of the struct asked of it.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were asked for"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SourceSpec;

    #[test]
    fn the_field_names_come_from_the_struct_renames_included() {
        assert_eq!(field_names::<SourceSpec>(), ["git", "ref", "path"]);
    }

    #[test]
    fn unknown_fields_are_collected_while_collecting_and_fatal_otherwise() {
        let json = serde_json::json!({"git": "/srv/app.git", "reff": "main", "path": "app"});
        let (parsed, unknown) =
            collecting(|| Checked::<SourceSpec>::deserialize(json.clone()).map(|c| c.0));
        let parsed = parsed.expect("parsed without the unknown field");
        assert_eq!(parsed.git.value, "/srv/app.git");
        assert_eq!(parsed.path.map(|p| p.value).as_deref(), Some("app"));
        let found: Vec<(&str, bool, &[&str])> = unknown
            .iter()
            .map(|u| (u.field.as_str(), u.loc.is_known(), u.expected))
            .collect();
        assert_eq!(found, [("reff", false, &["git", "ref", "path"][..])]);
        let error = Checked::<SourceSpec>::deserialize(json)
            .err()
            .expect("refused outside `collecting`");
        assert!(
            error.to_string().contains("unknown field `reff`"),
            "{error}"
        );
    }
}
