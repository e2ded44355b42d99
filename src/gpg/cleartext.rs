//! The framing of an OpenPGP clear-signed text (RFC 4880 §7), checked strictly before anything
//! is verified or parsed, so that the bytes a signature covers are the only bytes used.
//!
//! A clear-signed file is accepted only as exactly one frame: the `BEGIN PGP SIGNED MESSAGE`
//! line first (nothing before it, not even white space), `Hash:` headers, an empty line, the
//! dash-escaped text, one signature block, and nothing but line ends after its `END` line.
//! Text that is not clear-signed must not hold an armor line anywhere, so a signed text cannot
//! hide inside an unsigned one (or behind quote marks, indentation, or a no-break space).
//! Pure code.

pub const BEGIN_SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
pub const BEGIN_SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----";
pub const END_SIGNATURE: &str = "-----END PGP SIGNATURE-----";

/// Why a text is not one well-formed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error(
        "there is text before the '{BEGIN_SIGNED}' line; a signed file must start with it (sign the file itself, not a message that quotes it)"
    )]
    BeforeHeader,
    #[error("there is text after the '{END_SIGNATURE}' line; nothing may follow the signature")]
    AfterSignature,
    #[error("the file holds more than one signed message or signature; sign exactly one text")]
    Twice,
    #[error("an OpenPGP armor line appears inside the text (line {0}); a text may hold no armor but its own frame")]
    ArmorInside(usize),
    #[error("armor header {0:?} is not allowed; only Hash: headers are")]
    BadHeader(String),
    #[error("line {0} starts with '-' but is not dash-escaped ('- ')")]
    NotDashEscaped(usize),
    #[error("the signature block is not terminated by '{END_SIGNATURE}'")]
    Unterminated,
    #[error("the file is not UTF-8 text")]
    NotText,
    #[error("the file is an OpenPGP message, not a clear-signed text; sign it with debsign (gpg --clearsign)")]
    NotClearSigned,
}

/// A text, as framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed<'a> {
    /// No OpenPGP armor at all.
    Unsigned(&'a str),
    /// One clear-signed frame; `text` is the cleartext with dash-escaping undone, line ends `\n`
    /// (what a verifier hashes, before trailing white space is dropped).
    ClearSigned { text: String },
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// Is this line an armor line (the start of any OpenPGP armor), or something that a lenient
/// parser could take for one after stripping prefixes?
fn armor_like(line: &str) -> bool {
    let trimmed = line.trim_start_matches(|c: char| c.is_whitespace() || "> |\u{a0}".contains(c));
    trimmed.starts_with("-----BEGIN PGP") || trimmed.starts_with("-----END PGP")
}

/// Check a text's framing; see the module documentation.
pub fn frame(text: &str) -> Result<Framed<'_>, FramingError> {
    if !text.starts_with(BEGIN_SIGNED) {
        if text.starts_with("-----BEGIN PGP MESSAGE-----") {
            return Err(FramingError::NotClearSigned);
        }
        if text.contains("BEGIN PGP") || text.contains("END PGP") {
            if let Some(n) = lines(text).position(armor_like) {
                return Err(if text[..text.find("-----BEGIN PGP").unwrap_or(0)].trim().is_empty() {
                    FramingError::BeforeHeader
                } else {
                    FramingError::ArmorInside(n + 1)
                });
            }
            // "BEGIN PGP" in prose, not an armor line: still refuse what a lenient parser might
            // dearmor.
            return Err(FramingError::ArmorInside(0));
        }
        return Ok(Framed::Unsigned(text));
    }
    let mut it = lines(text).enumerate().peekable();
    // The header line itself: exactly the marker.
    match it.next() {
        Some((_, l)) if l == BEGIN_SIGNED => {}
        _ => return Err(FramingError::BeforeHeader),
    }
    // Armor headers up to an empty line.
    loop {
        match it.next() {
            Some((_, "")) => break,
            Some((_, h)) if h.starts_with("Hash: ") && h[6..].split(',').all(hash_name_ok) => {}
            Some((_, h)) => return Err(FramingError::BadHeader(h.chars().take(80).collect())),
            None => return Err(FramingError::Unterminated),
        }
    }
    // The dash-escaped cleartext, up to the signature.
    let mut out: Vec<&str> = Vec::new();
    loop {
        let Some((n, l)) = it.next() else { return Err(FramingError::Unterminated) };
        if l == BEGIN_SIGNATURE {
            break;
        }
        if let Some(rest) = l.strip_prefix("- ") {
            if armor_like(rest) {
                return Err(FramingError::ArmorInside(n + 1));
            }
            out.push(rest);
        } else if l.starts_with('-') {
            return Err(FramingError::NotDashEscaped(n + 1));
        } else if armor_like(l) {
            return Err(FramingError::ArmorInside(n + 1));
        } else {
            out.push(l);
        }
    }
    // The signature block, up to its end line.
    loop {
        let Some((_, l)) = it.next() else { return Err(FramingError::Unterminated) };
        if l == END_SIGNATURE {
            break;
        }
        if l.starts_with("-----") {
            return Err(FramingError::Twice);
        }
    }
    // Nothing but empty lines after it.
    for (_, l) in it {
        if l.contains("-----BEGIN PGP") {
            return Err(FramingError::Twice);
        }
        if !l.trim().is_empty() {
            return Err(FramingError::AfterSignature);
        }
    }
    // The line end before the signature belongs to the frame, not the text (RFC 4880 §7.1).
    let mut text = out.join("\n");
    text.push('\n');
    Ok(Framed::ClearSigned { text })
}

fn hash_name_ok(h: &str) -> bool {
    matches!(h.trim(), "SHA1" | "SHA224" | "SHA256" | "SHA384" | "SHA512" | "SHA3-256" | "SHA3-512" | "RIPEMD160")
}

/// The text an unverified reader may parse: the text of an unsigned file, or the cleartext of a
/// well-framed signed one (for repositories that take unsigned uploads, and for files whose
/// signature does not matter, such as a `.dsc` inside a build request).
pub fn text_of(text: &str) -> Result<std::borrow::Cow<'_, str>, FramingError> {
    Ok(match frame(text)? {
        Framed::Unsigned(t) => std::borrow::Cow::Borrowed(t),
        Framed::ClearSigned { text } => std::borrow::Cow::Owned(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "-----BEGIN PGP SIGNATURE-----\n\niQEz\n=abcd\n-----END PGP SIGNATURE-----\n";

    fn signed(body: &str) -> String {
        format!("{BEGIN_SIGNED}\nHash: SHA512\n\n{body}{SIG}")
    }

    #[test]
    fn a_clean_frame_gives_its_text() {
        let text = signed("Source: hello\n- -dashed\n");
        let f = frame(&text).unwrap();
        assert_eq!(f, Framed::ClearSigned { text: "Source: hello\n-dashed\n".into() });
        assert_eq!(frame("Source: hello\n").unwrap(), Framed::Unsigned("Source: hello\n"));
        // Trailing empty lines after the signature are fine, CRLF too.
        assert!(frame(&format!("{}\n\n", signed("A: b\n"))).is_ok());
        assert!(frame(&signed("A: b\n").replace('\n', "\r\n")).is_ok());
    }

    #[test]
    fn wrapping_variants_are_refused() {
        let inner = signed("Source: hello\n");
        let cases: Vec<(String, &str)> = vec![
            (format!(" {inner}"), "space prefix"),
            (inner.lines().map(|l| format!("> {l}\n")).collect(), "quoted"),
            (inner.lines().map(|l| format!("| {l}\n")).collect(), "piped"),
            (inner.lines().map(|l| format!(" {l}\n")).collect(), "indented"),
            (format!("Source: evil\n\n{inner}"), "garbage before"),
            (format!("{inner}Source: evil\n"), "garbage after"),
            (format!("{inner}{inner}"), "two signed blocks"),
            (signed("Source: hello\n\u{a0}\nSource: evil\n").replacen("\n\n", "\n\u{a0}\n", 1), "NBSP blank line"),
            (signed("Source: hello\n-not escaped\n"), "dash-escaping"),
            (signed(&format!("- {BEGIN_SIGNED}\n")), "nested frame"),
            (format!("{BEGIN_SIGNED}\nComment: x\n\nA: b\n{SIG}"), "other header"),
            (format!("{BEGIN_SIGNED}\nHash: SHA512\n\nA: b\n"), "unterminated"),
            (format!("\u{feff}{inner}"), "BOM"),
            (format!("\u{a0}{inner}"), "NBSP prefix"),
        ];
        for (text, what) in cases {
            assert!(frame(&text).is_err(), "{what} was accepted:\n{text}");
        }
    }

    #[test]
    fn text_of_unsigned_and_signed() {
        assert_eq!(text_of("A: b\n").unwrap(), "A: b\n");
        assert_eq!(text_of(&signed("A: b\n")).unwrap(), "A: b\n");
        assert!(text_of(&format!("x\n{}", signed("A: b\n"))).is_err());
    }
}
