//! The layering of buildbay's modules (docs/ARCHITECTURE.md, "Layers"), checked against the
//! source: a module uses only modules of lower layers, so there are no import cycles, the
//! ground floor (`gpg`, `store`, `deb`, `protocol`) knows nothing above it, and `archive` never
//! reaches `web` or `api`. Test-only code.

/// Each module and its layer; a module may use only modules of strictly lower layers.
pub const LAYERS: &[(&str, u8)] = &[
    ("gpg", 0),
    ("store", 0),
    ("systemd", 0),
    ("http", 0),
    ("deb", 1),
    ("auth", 1),
    ("events", 1),
    ("metrics", 2),
    ("mirror", 2),
    ("protocol", 2),
    ("layout", 2),
    ("config", 3),
    ("sources", 4),
    ("remote", 4),
    ("keyserver", 4),
    ("archive", 4),
    ("incoming", 4),
    ("rootops", 4),
    ("chroot", 5),
    ("instance", 6),
    ("import", 7),
    ("port", 7),
    ("mail", 7),
    ("packager", 8),
    ("gate", 8),
    ("test_packages", 8),
    ("keyring", 9),
    ("builder", 9),
    ("dispatch", 9),
    ("helper", 10),
    ("jobs", 10),
    ("daemon", 11),
    ("api", 12),
    ("web", 13),
    ("client", 13),
    ("serve", 14),
];

/// The modules a source text uses through `crate::…` paths (`use crate::{a, b::c}` included).
pub fn uses(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d}`: the first segment of each item at the top level.
            let mut depth = 0;
            let mut item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphanumeric() || c == '_') => ident.push(c),
                    _ => {
                        if !ident.is_empty() {
                            out.push(std::mem::take(&mut ident));
                        }
                        if !c.is_whitespace() {
                            item_start = false;
                        }
                    }
                }
            }
            if !ident.is_empty() {
                out.push(ident);
            }
        } else {
            let ident: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push(ident);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What is wrong with `module` using what `text` uses, if anything.
pub fn violations(module: &str, text: &str) -> Vec<String> {
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
    let Some(own) = layer(module) else { return vec![format!("module {module} has no layer in LAYERS")] };
    uses(text)
        .into_iter()
        .filter(|u| u != module)
        .filter_map(|u| match layer(&u) {
            Some(l) if l < own => None,
            Some(l) => Some(format!("{module} (layer {own}) uses {u} (layer {l}): only lower layers may be used")),
            // Not a module: a macro at the crate root (`from_redb_errors`).
            None => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sources_of(module: &str) -> String {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut text = String::new();
        let file = src.join(format!("{module}.rs"));
        if file.exists() {
            text.push_str(&std::fs::read_to_string(&file).unwrap());
        }
        let mut stack = vec![src.join(module)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    text.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        text
    }

    #[test]
    fn every_module_uses_only_lower_layers() {
        let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
        let modules: Vec<&str> =
            lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
        for m in &modules {
            if *m == "layering" {
                continue;
            }
            assert!(LAYERS.iter().any(|(n, _)| n == m), "module {m} has no layer in src/layering.rs");
        }
        let wrong: Vec<String> = LAYERS.iter().flat_map(|(m, _)| violations(m, &sources_of(m))).collect();
        assert!(wrong.is_empty(), "layering violations:\n{}", wrong.join("\n"));
    }

    #[test]
    fn the_check_sees_every_spelling() {
        assert_eq!(uses("use crate::{archive::{self, Archive}, deb::Dist, store};"), ["archive", "deb", "store"]);
        assert_eq!(uses("let x = crate::events::iso::format(t);"), ["events"]);
        // What the test exists for: `use crate::web` in archive fails it.
        assert!(!violations("archive", "use crate::web::pages;").is_empty());
        assert!(!violations("archive", "use crate::{deb, api::ApiError};").is_empty());
        assert!(!violations("deb", "use crate::config::Status;").is_empty());
        assert!(violations("archive", "use crate::{deb, store};").is_empty());
    }
}
