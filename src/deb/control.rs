//! deb822 stanzas (`.changes`, `.dsc`, `Packages`, `Sources`, `Release`, control files).
//!
//! Parsing goes through `deb822-lossless`; a [`Stanza`] is the owned, ordered result that the
//! rest of buildbay works with, and writes back in deb822 form.

use std::fmt::{self, Write as _};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("not valid deb822 control data: {0}")]
    Syntax(String),
    #[error("expected one stanza, found {0}")]
    StanzaCount(usize),
    #[error("mandatory field {0} is missing")]
    Missing(&'static str),
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("OpenPGP armor is malformed: {0}")]
    Armor(String),
}

/// One deb822 paragraph: ordered fields with case-insensitive lookup.
///
/// Multi-line values are kept as their lines joined by `\n` (the first line may be empty, as in `Files:`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    pub fn new() -> Stanza {
        Stanza::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// A mandatory field, trimmed.
    pub fn require(&self, key: &'static str) -> Result<&str, ControlError> {
        match self.get(key).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ControlError::Missing(key)),
        }
    }

    /// A mandatory field parsed into a type.
    pub fn parse_field<T: FromStr>(&self, key: &'static str) -> Result<T, ControlError>
    where
        T::Err: fmt::Display,
    {
        self.require(key)?.parse().map_err(|e: T::Err| ControlError::Field { field: key, reason: e.to_string() })
    }

    /// Set a field, replacing it in place or appending it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }

    /// Rename a field, keeping its position.
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(slot) = self.fields.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(from)) {
            slot.0 = to.to_owned();
        }
    }

    /// Move the named fields to the front, in the given order.
    pub fn reorder_front(&mut self, keys: &[&str]) {
        let mut front = Vec::new();
        for key in keys {
            if let Some(i) = self.fields.iter().position(|(k, _)| k.eq_ignore_ascii_case(key)) {
                front.push(self.fields.remove(i));
            }
        }
        front.append(&mut self.fields);
        self.fields = front;
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parse exactly one stanza.
    pub fn parse_one(text: &str) -> Result<Stanza, ControlError> {
        let mut all = parse_stanzas(text)?;
        match all.len() {
            1 => Ok(all.remove(0)),
            n => Err(ControlError::StanzaCount(n)),
        }
    }
}

impl fmt::Display for Stanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.fields {
            f.write_str(k)?;
            f.write_char(':')?;
            for (i, line) in v.split('\n').enumerate() {
                if i == 0 {
                    if !line.is_empty() {
                        f.write_char(' ')?;
                        f.write_str(line)?;
                    }
                } else {
                    f.write_char(' ')?;
                    f.write_str(if line.is_empty() { "." } else { line })?;
                }
                f.write_char('\n')?;
            }
        }
        Ok(())
    }
}

/// Parse every stanza of a deb822 text.
pub fn parse_stanzas(text: &str) -> Result<Vec<Stanza>, ControlError> {
    if text.contains('\0') {
        return Err(ControlError::Syntax("contains a NUL byte".into()));
    }
    let doc = deb822_lossless::Deb822::from_str(text).map_err(|e| ControlError::Syntax(e.to_string()))?;
    Ok(doc
        .paragraphs()
        .map(|p| Stanza {
            fields: p
                .entries()
                .filter_map(|e| {
                    let key = e.key()?;
                    let value = e.value();
                    // A value that starts on the next line (`Files:`) keeps its empty first line.
                    let raw = e.to_string();
                    let first = raw.split('\n').next().unwrap_or_default();
                    let starts_below =
                        first.trim_end().strip_suffix(':') == Some(key.as_str()) && raw.len() > first.len() + 1;
                    Some((key, if starts_below { format!("\n{value}") } else { value }))
                })
                .collect(),
        })
        .filter(|s| !s.fields.is_empty())
        .collect())
}

/// The text of an unsigned file, or the cleartext of a strictly framed clear-signed one (see
/// [`crate::gpg::cleartext`]); the signature is not checked here.
pub fn strip_signature(text: &str) -> Result<String, ControlError> {
    crate::gpg::cleartext::text_of(text).map(|t| t.into_owned()).map_err(|e| ControlError::Armor(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSC: &str = "Format: 3.0 (native)\nSource: hello\nVersion: 1.0\nFiles:\n 0123 12 hello_1.0.tar.xz\nDescription: short\n line one\n .\n line three\n";

    #[test]
    fn roundtrip() {
        let s = Stanza::parse_one(DSC).unwrap();
        assert_eq!(s.get("source"), Some("hello"));
        assert_eq!(s.get("Files"), Some("\n0123 12 hello_1.0.tar.xz"));
        assert_eq!(s.to_string(), DSC);
    }

    #[test]
    fn edit() {
        let mut s = Stanza::parse_one(DSC).unwrap();
        s.rename("Source", "Package");
        s.set("Directory", "pool/main/h/hello");
        s.reorder_front(&["Package", "Version"]);
        assert!(s.to_string().starts_with("Package: hello\nVersion: 1.0\nFormat:"));
        assert!(s.to_string().contains("Directory: pool/main/h/hello\n"));
    }

    #[test]
    fn multiple_and_errors() {
        let all = parse_stanzas("A: 1\n\nB: 2\n").unwrap();
        assert_eq!(all.len(), 2);
        assert!(matches!(Stanza::parse_one("A: 1\n\nB: 2\n"), Err(ControlError::StanzaCount(2))));
        assert!(Stanza::parse_one("A: 1\n").unwrap().require("Source").is_err());
        assert!(parse_stanzas("A: 1\0\n").is_err());
    }
}
