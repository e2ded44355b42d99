//! The API: typed arguments parsed from mini-buildd's wire encoding, RFC 7807 errors, and the
//! calls themselves. Transport-free: `web` feeds it HTTP requests, `main` the command line.

pub mod calls;
pub mod registry;

use crate::auth::{Principal, Role};
use registry::{Call, Default, Kind};
use std::collections::BTreeMap;

/// An error as the API reports it: an HTTP status and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} (HTTP {status})")]
pub struct ApiError {
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: u16, detail: impl Into<String>) -> ApiError {
        ApiError { status, detail: detail.into() }
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(400, detail)
    }

    pub fn title(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        }
    }

    /// The RFC 7807 body (`application/problem+json`), as mini-buildd writes it.
    pub fn problem(&self) -> serde_json::Value {
        crate::events::problem(self.status, self.title(), &self.detail)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    List(Vec<String>),
}

/// Query keys that are about the request, not the call: the answer's format, the confirmation,
/// the browser form's CSRF token and where it goes afterwards.
pub const TRANSPORT_KEYS: &[&str] = &["output", "confirm", "csrfmiddlewaretoken", "next", "back"];

/// The arguments of one call, parsed and checked against the registry.
#[derive(Debug, Clone)]
pub struct Args {
    pub call: &'static Call,
    values: BTreeMap<&'static str, Value>,
}

impl Args {
    /// Parse mini-buildd's query encoding; empty values count as not given. A key that is
    /// neither an argument of the call nor one of the transport's ([`TRANSPORT_KEYS`]) is an
    /// error that names the call's arguments: nothing a client sends is silently dropped.
    pub fn from_query<'a>(
        call: &'static Call,
        query: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Args, ApiError> {
        let given: BTreeMap<&str, &str> = query.into_iter().collect();
        if let Some(unknown) =
            given.keys().find(|k| !TRANSPORT_KEYS.contains(k) && !call.args.iter().any(|a| a.name == **k))
        {
            let names: Vec<&str> = call.args.iter().map(|a| a.name).collect();
            return Err(ApiError::bad_request(format!(
                "API call '{}' has no argument {unknown:?}; its arguments are: {}",
                call.name,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )));
        }
        let mut values = BTreeMap::new();
        for a in call.args {
            let raw = match given.get(a.name).copied().filter(|v| !v.is_empty()) {
                Some(v) => v,
                None => match a.default {
                    Default::Required => {
                        return Err(ApiError::bad_request(format!(
                            "API call '{}': argument {} is required",
                            call.name, a.name
                        )));
                    }
                    Default::Server => continue,
                    Default::Value("") => continue,
                    Default::Value(v) => v,
                },
            };
            let v =
                match a.kind {
                    Kind::Str | Kind::Multiline | Kind::Secret => Value::Str(raw.to_owned()),
                    Kind::Bool => match raw {
                        "True" | "true" | "1" => Value::Bool(true),
                        "False" | "false" | "0" => Value::Bool(false),
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "argument {}: {raw:?} is not a boolean (use True)",
                                a.name
                            )));
                        }
                    },
                    Kind::Int => Value::Int(raw.parse().map_err(|_| {
                        ApiError::bad_request(format!("argument {}: {raw:?} is not an integer", a.name))
                    })?),
                    Kind::List => Value::List(
                        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                    ),
                };
            if !a.choices.is_empty() {
                let items = match &v {
                    Value::Str(s) => vec![s.as_str()],
                    Value::List(l) => l.iter().map(String::as_str).collect(),
                    _ => vec![],
                };
                if let Some(bad) = items.iter().find(|i| !a.choices.contains(i)) {
                    return Err(ApiError::bad_request(format!(
                        "argument {}: {bad:?} is not one of {}",
                        a.name,
                        a.choices.join(", ")
                    )));
                }
            }
            values.insert(a.name, v);
        }
        Ok(Args { call, values })
    }

    /// The query pairs a client sends for these arguments (mini-buildd's encoding).
    pub fn to_query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        for a in self.call.args {
            let Some(v) = self.values.get(a.name) else { continue };
            let s = match v {
                Value::Str(s) => s.clone(),
                Value::Bool(true) => "True".into(),
                Value::Bool(false) => continue,
                Value::Int(i) => i.to_string(),
                Value::List(l) => l.join(","),
            };
            q.push((a.name.to_owned(), s));
        }
        q
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(Value::Str(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Bool(true)))
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.values.get(name) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(Value::List(l)) => l.clone(),
            _ => vec![],
        }
    }

    /// A required or optional argument parsed into a domain type, at the boundary.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        self.str(name)
            .map(|s| s.parse::<T>().map_err(|e| ApiError::bad_request(format!("argument {name}: {e}"))))
            .transpose()
    }

    pub fn require<T: std::str::FromStr>(&self, name: &str) -> Result<T, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        self.parse(name)?.ok_or_else(|| ApiError::bad_request(format!("argument {name} is required")))
    }
}

/// The checks mini-buildd makes before running a call, in its order: auth, running, confirm;
/// before them, a one-time password must have been changed.
pub fn admit(call: &Call, who: &Principal, running: bool, confirm: Option<&str>) -> Result<(), ApiError> {
    if who.must_change_password && !matches!(call.name, "password_change" | "status" | "role") {
        return Err(ApiError::new(
            403,
            format!(
                "user {} has a one-time password: change it first (password_change, or the account page)",
                who.user.as_deref().unwrap_or("?")
            ),
        ));
    }
    if who.role < call.auth {
        let level = match call.auth {
            Role::None => "NONE",
            Role::Login => "LOGIN",
            Role::Staff => "STAFF",
            Role::Admin => "ADMIN",
        };
        let status = if who.user.is_some() { 403 } else { 401 };
        return Err(ApiError::new(status, format!("API call '{}' needs authorization: {level}", call.name)));
    }
    if call.needs_running && !running {
        return Err(ApiError::new(
            503,
            format!("API call '{}' needs running daemon: start it with the start call", call.name),
        ));
    }
    if call.confirm && confirm != Some(call.name) {
        return Err(ApiError::bad_request(format!("API call '{0}' needs to be confirmed: add confirm={0}", call.name)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_encoding() {
        let call = registry::find("sources_list").unwrap();
        let args = Args::from_query(
            call,
            [("types", "deb,deb-src"), ("rollbacks", "2"), ("with_extra", "True"), ("output", "json")],
        )
        .unwrap();
        assert_eq!(args.list("types"), ["deb", "deb-src"]);
        assert_eq!(args.int("rollbacks"), Some(2));
        assert!(args.bool("with_extra"));
        assert!(!args.bool("with_comment"));
        assert_eq!(
            args.to_query(),
            [
                ("types".into(), "deb,deb-src".into()),
                ("rollbacks".into(), "2".into()),
                ("with_extra".into(), "True".into())
            ]
        );
        // Defaults the client always sends are applied when absent.
        let args = Args::from_query(call, []).unwrap();
        assert_eq!(args.list("types"), ["deb"]);
        assert_eq!(args.int("rollbacks"), Some(0));
        // Wrong types and choices.
        assert_eq!(Args::from_query(call, [("rollbacks", "x")]).unwrap_err().status, 400);
        assert_eq!(Args::from_query(call, [("types", "rpm")]).unwrap_err().status, 400);
        assert_eq!(Args::from_query(call, [("with_extra", "yes")]).unwrap_err().status, 400);
        let migrate = registry::find("migrate").unwrap();
        assert!(
            Args::from_query(migrate, [("source", "hello")]).unwrap_err().detail.contains("distribution is required")
        );
        // An unknown argument is named, with the call's own; the transport's keys pass.
        let e = Args::from_query(migrate, [("source", "hello"), ("distribution", "d"), ("keys", "x")]).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.detail.contains("no argument \"keys\"") && e.detail.contains("source, distribution, full"),
            "{}",
            e.detail
        );
        let ok = [("source", "h"), ("distribution", "d"), ("confirm", "migrate"), ("output", "html"), ("next", "/")];
        assert!(Args::from_query(migrate, ok).is_ok());
        let start = registry::find("start").unwrap();
        assert!(Args::from_query(start, [("force", "True")]).unwrap_err().detail.contains("arguments are: none"));
    }

    #[test]
    fn admission() {
        let migrate = registry::find("migrate").unwrap();
        let anon = Principal::anonymous();
        let p = |role| Principal {
            user: Some("s".into()),
            role,
            via: crate::auth::Via::Token,
            must_change_password: false,
            session: None,
        };
        let (staff, login) = (p(Role::Staff), p(Role::Login));
        assert_eq!(admit(migrate, &anon, true, Some("migrate")).unwrap_err().status, 401);
        assert_eq!(admit(migrate, &login, true, Some("migrate")).unwrap_err().status, 403);
        assert_eq!(admit(migrate, &staff, true, None).unwrap_err().status, 400);
        admit(migrate, &staff, true, Some("migrate")).unwrap();
        let snap = registry::find("snapshot_ls").unwrap();
        assert_eq!(admit(snap, &anon, false, None).unwrap_err().status, 503);
        let one_time = Principal { must_change_password: true, ..p(Role::Admin) };
        assert_eq!(admit(migrate, &one_time, true, Some("migrate")).unwrap_err().status, 403);
        admit(registry::find("password_change").unwrap(), &one_time, true, Some("password_change")).unwrap();
    }
}
