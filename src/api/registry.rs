//! The call registry: every API call with its auth level, flags and typed arguments.
//!
//! One table drives the HTTP API (`/mini_buildd/api/<call>/`), the `buildbay api` command line,
//! the API index and reference, and the browser forms. Names, flags, encodings and defaults
//! follow mini-buildd 2.x, so its clients work unchanged.

use crate::auth::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// Several lines (an armored key).
    Multiline,
    /// `True` over HTTP, `--flag` on the command line.
    Bool,
    Int,
    /// Comma-separated over HTTP, `--key v0 v1` on the command line.
    List,
    /// A password: only in a POST body, never in a URL; a password field in a form.
    Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// Required.
    Required,
    /// Optional; absent means "not given" (server decides).
    Server,
    /// A fixed default the client sends (e.g. `types=deb`, `rollbacks=0`).
    Value(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Arg {
    /// The identity: the HTTP query key (`with_repositories`).
    pub name: &'static str,
    /// A positional argument on the command line (otherwise `--name-with-dashes`).
    pub positional: bool,
    pub short: Option<char>,
    pub kind: Kind,
    pub default: Default,
    pub choices: &'static [&'static str],
    pub doc: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub name: &'static str,
    pub auth: Role,
    /// Answers 503 while the daemon is stopped.
    pub needs_running: bool,
    /// Needs `confirm=<name>`.
    pub confirm: bool,
    pub args: &'static [Arg],
    pub doc: &'static str,
    /// Consumer, Developer or Administrator (the index groups by it).
    pub group: &'static str,
}

impl Arg {
    /// The long option: `--with-repositories`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

const fn pos(name: &'static str, doc: &'static str) -> Arg {
    Arg { name, positional: true, short: None, kind: Kind::Str, default: Default::Required, choices: &[], doc }
}

const fn opt(name: &'static str, short: Option<char>, kind: Kind, default: Default, doc: &'static str) -> Arg {
    Arg { name, positional: false, short, kind, default, choices: &[], doc }
}

const KINDS: &[&str] = &crate::config::Kind::NAMES;
const REPOSITORIES: Arg =
    opt("repositories", Some('R'), Kind::List, Default::Server, "Repository identities (default: all).");
const CODENAMES: Arg = opt("codenames", Some('C'), Kind::List, Default::Server, "Codenames (default: all).");
const VERSION: Arg = opt("version", Some('V'), Kind::Str, Default::Server, "Exact version (default: any).");
const SOURCE: Arg = pos("source", "Source package name.");
const DISTRIBUTION: Arg = pos("distribution", "Distribution, e.g. bookworm-test-unstable.");
const SUBSCRIPTION_ARGS: &[Arg] = &[
    Arg { default: Default::Value(""), ..pos("source", "Source package (empty: all).") },
    Arg { default: Default::Value(""), ..pos("distribution", "Distribution (empty: all).") },
];
/// The target distributions of `port` and `port_ext` (positional, one or more).
const fn port_targets(name: &'static str) -> Arg {
    Arg {
        name,
        positional: true,
        short: None,
        kind: Kind::List,
        default: Default::Required,
        choices: &[],
        doc: "Uploadable distributions to port to.",
    }
}
const PORT_OPTIONS: Arg = opt(
    "options",
    Some('O'),
    Kind::Str,
    Default::Value(crate::port::DEFAULT_OPTIONS),
    "Upload options for the port's changelog entry, separated by |.",
);
const fn role(doc: &'static str) -> Arg {
    Arg {
        name: "role",
        positional: false,
        short: None,
        kind: Kind::Str,
        default: Default::Value("login"),
        choices: &["login", "staff", "admin"],
        doc,
    }
}
const LS_ARGS: &[Arg] = &[
    SOURCE,
    REPOSITORIES,
    CODENAMES,
    VERSION,
    opt("min_version", Some('M'), Kind::Str, Default::Server, "Minimal version."),
];

pub static CALLS: &[Call] = &[
    Call {
        name: "status",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "Status of the instance: identity, URLs, load (-1 when stopped), active chroots, chroots_preparing (being made now: their uploads wait), remotes (the URLs of the active remotes, and of those armed to activate once a check passes), and keyring_packages (per distribution that builds or holds the keyring package: its version, and whether it ships the active archive key).",
        args: &[opt(
            "with_repositories",
            Some('R'),
            Kind::Bool,
            Default::Server,
            "Also list repositories with their layouts.",
        )],
    },
    Call {
        name: "pub_key",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "The instance's ASCII-armored public key: it signs the repositories.",
        args: &[],
    },
    Call {
        name: "handshake",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "Between instances: a message clear-signed by one of this instance's remotes is answered with this instance's own clear-signed handshake message.",
        args: &[opt(
            "signed_message",
            Some('S'),
            Kind::Multiline,
            Default::Required,
            "The calling instance's clear-signed \"Hand Shake\".",
        )],
    },
    Call {
        name: "dput_conf",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Developer",
        doc: "A dput.cf snippet for uploading to this instance.",
        args: &[opt("dput_ng_profile", Some('N'), Kind::Bool, Default::Server, "A dput-ng JSON profile instead.")],
    },
    Call {
        name: "sources_list",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "APT sources.list lines for the repositories.",
        args: &[
            CODENAMES,
            REPOSITORIES,
            opt("suites", Some('S'), Kind::List, Default::Server, "Suites (default: all)."),
            Arg {
                name: "types",
                positional: false,
                short: Some('T'),
                kind: Kind::List,
                default: Default::Value("deb"),
                choices: &["deb", "deb-src"],
                doc: "Line types.",
            },
            opt(
                "options",
                Some('O'),
                Kind::Str,
                Default::Server,
                "APT line options, e.g. signed-by=/usr/share/keyrings/x.asc.",
            ),
            opt("rollbacks", Some('r'), Kind::Int, Default::Value("0"), "Also list this many rollbacks (<0: all)."),
            opt("snapshot", Some('P'), Kind::Str, Default::Server, "A snapshot name."),
            opt("mirror", Some('M'), Kind::Str, Default::Server, "A mirror URL instead of this instance."),
            opt(
                "with_extra",
                Some('X'),
                Kind::Bool,
                Default::Server,
                "Accepted for mini-buildd's client; not yet used (extra sources reach builds, not these lines).",
            ),
            opt("with_comment", Some('D'), Kind::Bool, Default::Server, "Comment each line."),
        ],
    },
    Call {
        name: "ls",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "Where a source package is: its version in every distribution and rollback.",
        args: LS_ARGS,
    },
    Call {
        name: "show",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "Like ls, plus uploadability, migration targets and pool paths.",
        args: LS_ARGS,
    },
    Call {
        name: "debdiff",
        auth: Role::None,
        needs_running: false,
        confirm: false,
        group: "Consumer",
        doc: "debdiff of two versions of a source package in a repository's pool (default: the newest against the one below it).",
        args: &[
            SOURCE,
            pos("repository", "Repository identity."),
            opt(
                "versiona",
                Some('a'),
                Kind::Str,
                Default::Server,
                "The older version (default: the newest below versionb).",
            ),
            opt("versionb", Some('b'), Kind::Str, Default::Server, "The newer version (default: the newest)."),
        ],
    },
    Call {
        name: "migrate",
        auth: Role::Staff,
        needs_running: false,
        confirm: true,
        group: "Developer",
        doc: "Migrate a source package to the next suite; from a rollback distribution, restore it. \
              buildbay first checks that its binaries are installable there, that the QA the distribution \
              gates on passed for this version, and the suite's minimum age; it refuses with the reasons.",
        args: &[
            SOURCE,
            DISTRIBUTION,
            opt("full", Some('F'), Kind::Bool, Default::Server, "Follow the whole migration chain."),
            VERSION,
            opt(
                "force",
                None,
                Kind::Bool,
                Default::Server,
                "Migrate despite the checks (admins only); the MIGRATED event records what was overridden.",
            ),
        ],
    },
    Call {
        name: "port",
        auth: Role::Staff,
        needs_running: true,
        confirm: true,
        group: "Developer",
        doc: "No-change port of an installed source package into other distributions (a rebuild, with \
              +rebuilt<stamp>, when the target is the source distribution). The version's appendix is \
              rewritten for each target, a changelog entry is added, and the source, signed with this \
              instance's key, goes through incoming as an upload.",
        args: &[
            SOURCE,
            pos("from_distribution", "The distribution the source is installed in, e.g. bookworm-test-unstable."),
            port_targets("to_distributions"),
            VERSION,
            PORT_OPTIONS,
        ],
    },
    Call {
        name: "port_ext",
        auth: Role::Staff,
        needs_running: true,
        confirm: true,
        group: "Developer",
        doc: "No-change port of an external source package: the .dsc and its files are fetched by URL, the \
              .dsc's signature is verified against the AptKeys and Debian's and Ubuntu's keyrings, each \
              file against its signed SHA256; the target's default version appendix is appended.",
        args: &[
            pos("dsc", "The http or https URL of the .dsc."),
            port_targets("distributions"),
            opt(
                "allow_unauthenticated",
                Some('u'),
                Kind::Bool,
                Default::Server,
                "Port it even when its signature cannot be verified.",
            ),
            PORT_OPTIONS,
        ],
    },
    Call {
        name: "keyring_packages",
        auth: Role::Admin,
        needs_running: true,
        confirm: true,
        group: "Administrator",
        doc: "Build <identity>-archive-keyring (the archive key in /usr/share/keyrings and a deb822 .sources per \
              repository, codename and suite that uses it) into each distribution whose suite has \
              build_keyring_package; wait for each, and migrate an installed one fully.",
        args: &[
            opt(
                "distributions",
                Some('D'),
                Kind::List,
                Default::Server,
                "Distributions (default: every one whose suite builds the keyring package).",
            ),
            opt("without_migration", Some('M'), Kind::Bool, Default::Server, "Do not migrate the packages."),
        ],
    },
    Call {
        name: "test_packages",
        auth: Role::Admin,
        needs_running: true,
        confirm: true,
        group: "Administrator",
        doc: "Upload buildbay's test packages (mbd-test-archall, mbd-test-cpp, mbd-test-ftbfs) to the active \
              experimental distributions. With --with-check, wait: archall and cpp must be INSTALLED, ftbfs \
              must FAIL.",
        args: &[
            Arg {
                name: "sources",
                positional: false,
                short: Some('S'),
                kind: Kind::List,
                default: Default::Server,
                choices: &["mbd-test-archall", "mbd-test-cpp", "mbd-test-ftbfs"],
                doc: "Test packages (default: all three).",
            },
            opt(
                "distributions",
                Some('D'),
                Kind::List,
                Default::Server,
                "Active experimental distributions (default: the first experimental suite of each repository and codename).",
            ),
            opt("auto_ports", Some('A'), Kind::List, Default::Server, "auto-ports for the test packages."),
            opt(
                "with_check",
                Some('c'),
                Kind::Bool,
                Default::Server,
                "Wait, and fail unless archall and cpp are INSTALLED and ftbfs FAILED.",
            ),
        ],
    },
    Call {
        name: "retry",
        auth: Role::Staff,
        needs_running: true,
        confirm: true,
        group: "Developer",
        doc: "Run a FAILED or REJECTED upload through the checks and builds again.",
        args: &[pos("bkey", "The upload's key, <source>/<version>/<timecode>[/source] (see its event).")],
    },
    Call {
        name: "cancel",
        auth: Role::Staff,
        needs_running: true,
        confirm: true,
        group: "Developer",
        doc: "Cancel a build: stop its unit and every process in it; the upload ends FAILED, canceled by you.",
        args: &[pos("bkey", "The build's key, <source>/<version>/<timecode>/<arch> (see status build_queue).")],
    },
    Call {
        name: "remove",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Remove a source package from a distribution (into its rollbacks, unless --without-rollback).",
        args: &[
            SOURCE,
            DISTRIBUTION,
            opt("without_rollback", None, Kind::Bool, Default::Server, "Do not keep it in the rollbacks."),
            VERSION,
        ],
    },
    Call {
        name: "snapshot_ls",
        auth: Role::None,
        needs_running: true,
        confirm: false,
        group: "Consumer",
        doc: "Snapshots of a distribution.",
        args: &[DISTRIBUTION],
    },
    Call {
        name: "snapshot_create",
        auth: Role::Admin,
        needs_running: true,
        confirm: true,
        group: "Administrator",
        doc: "Freeze a distribution as dists/<dist>/snapshots/<name>/.",
        args: &[DISTRIBUTION, pos("name", "Snapshot name.")],
    },
    Call {
        name: "snapshot_delete",
        auth: Role::Admin,
        needs_running: true,
        confirm: true,
        group: "Administrator",
        doc: "Delete a snapshot.",
        args: &[DISTRIBUTION, pos("name", "Snapshot name.")],
    },
    Call {
        name: "uploaders",
        auth: Role::Admin,
        needs_running: true,
        confirm: false,
        group: "Administrator",
        doc: "Per repository: whether unsigned uploads are allowed, and the uploader keys.",
        args: &[REPOSITORIES],
    },
    Call {
        name: "setup",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "mini-buildd's declarative setup: report the objects the options name, create or change those --update selects, and prepare, check and activate those --pca selects.",
        args: &[
            opt(
                "remotes",
                None,
                Kind::List,
                Default::Value(""),
                "Remotes to add, as http://host:port (or mini-buildd's tcp:host=HOST:port=PORT): their key is imported from their pub_key call (verify its fingerprint), then a handshake both ways checks them; one not yet activated on the other side is armed to activate once a check passes.",
            ),
            opt(
                "update",
                None,
                Kind::Str,
                Default::Server,
                "Create or change the objects the options name: all, or the identity_hash of each, comma-separated (as a run without it reports them). Without it, setup changes nothing: it reports each object (MISSING, ACTIVE, CHANGED with a diff, FAILED, DEACTIVATED).",
            ),
            opt(
                "pca",
                None,
                Kind::Str,
                Default::Server,
                "Prepare, check and activate the objects the options name: all, or their identity_hash, comma-separated. Without it, nothing is prepared, checked or activated (a chroot's image is not made).",
            ),
            opt("identity", None, Kind::Str, Default::Server, "Instance identity (default: host name)."),
            opt(
                "archive_origin",
                None,
                Kind::Str,
                Default::Server,
                "buildbay's own: the releases' Origin, which apt pins name: buildbay (Buildbay archive <identity>, the default), mini-buildd (Mini-Buildd archive <identity> on <host>, as a mini-buildd instance's clients pin it), or the text itself. Every distribution is published again with it.",
            ),
            opt(
                "from_origins",
                None,
                Kind::List,
                Default::Value(""),
                "Debian or Ubuntu: the origin's archive keys (from its keyring package on this host), main archive and current releases.",
            ),
            opt(
                "archives",
                Some('A'),
                Kind::List,
                Default::Value(""),
                "Archive URLs, e.g. http://deb.debian.org/debian/.",
            ),
            opt(
                "archives_from_apt_sources",
                None,
                Kind::Bool,
                Default::Server,
                "Add the archives of this host's apt sources.",
            ),
            opt(
                "archives_from_origins",
                None,
                Kind::Bool,
                Default::Server,
                "Add the --from-origins' archives (with neither this nor --sources-from-origins, --from-origins adds both).",
            ),
            opt(
                "archives_from_proxy",
                None,
                Kind::Bool,
                Default::Server,
                "Add the --from-origins' archives through the apt-cacher-ng on this host (127.0.0.1:3142); an error if none answers.",
            ),
            opt(
                "sources_from_origins",
                None,
                Kind::Bool,
                Default::Server,
                "Add the --from-origins' current releases as sources.",
            ),
            opt(
                "sources",
                None,
                Kind::List,
                Default::Value(""),
                "[Origin:]codename, e.g. bookworm or Debian:bookworm-backports: sources to check against the archives (InRelease, verified).",
            ),
            opt(
                "distributions_from_sources",
                None,
                Kind::Bool,
                Default::Server,
                "Add a distribution for each release codename among the sources, for this host's architecture.",
            ),
            opt(
                "distributions",
                None,
                Kind::List,
                Default::Value(""),
                "codename:arch0+arch1[:sbuild|nspawn|nspawn+network] (the build backend; default sbuild), e.g. bookworm:amd64.",
            ),
            opt(
                "repositories",
                None,
                Kind::List,
                Default::Value(""),
                "id:layout:codename0+codename1, e.g. test:Default:bookworm.",
            ),
            opt(
                "repositories_from_distributions",
                None,
                Kind::List,
                Default::Value(""),
                "id[:layout] (no layout: Debian Developer for debdev, else Default): repositories over the codenames of this setup's distributions.",
            ),
            opt(
                "chroots",
                None,
                Kind::List,
                Default::Value(""),
                "codename:arch0[+arch1], e.g. bookworm:amd64: chroots (machine images) to prepare, check and activate.",
            ),
            opt(
                "chroots_from_sources",
                None,
                Kind::Bool,
                Default::Server,
                "Add a chroot for each release codename among the sources, for this host's architecture.",
            ),
            Arg {
                name: "chroots_backend",
                positional: false,
                short: Some('C'),
                kind: Kind::Str,
                default: Default::Server,
                choices: &["Dir", "File", "LVM", "LoopLVM", "BtrfsSnapshot"],
                doc: "mini-buildd's chroot backends: buildbay's chroots are machine images in /var/lib/machines with an overlay per build, which is Dir; the others are refused.",
            },
            opt(
                "ftp_endpoint",
                None,
                Kind::Str,
                Default::Server,
                "Not changed by setup: the FTP listener is `serve --ftp` or buildbay-ftp.socket; a given value is answered with where it is.",
            ),
        ],
    },
    Call {
        name: "cronjob",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Run an internal job now (out of schedule); answers its record: when it ran, how long, what it did or why it failed, and its next scheduled run. The crontab page lists them all.",
        args: &[Arg { choices: crate::jobs::IDS, ..pos("id", "The job, by mini-buildd's id.") }],
    },
    Call {
        name: "remake_chroots",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Remove and prepare chroots from scratch, one at a time; a failing one does not stop the others.",
        args: &[
            opt("chroots", None, Kind::List, Default::Value(""), "codename:arch, … (default: every chroot)."),
            opt("keys", None, Kind::List, Default::Value(""), "mini-buildd's name for --chroots (the same keys)."),
        ],
    },
    Call {
        name: "wake",
        auth: Role::Staff,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Wake a remote: run its wake_command until its status answers; answers that status.",
        args: &[
            opt("remote", Some('r'), Kind::Str, Default::Required, "The remote, as its http (http://host:port)."),
            opt("sleep", Some('s'), Kind::Int, Default::Value("5"), "Seconds to wait after each wake command."),
            opt("attempts", Some('a'), Kind::Int, Default::Value("3"), "How often to run the wake command."),
        ],
    },
    Call {
        name: "debmirror",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Make a partial mirror of repositories with Debian's debmirror (from this instance over HTTP, Release signatures checked), into <state>/debmirror/<repository> (mini-buildd's call).",
        args: &[
            opt("suites", Some('S'), Kind::List, Default::Server, "Suites (default: all)."),
            opt("rollbacks", Some('r'), Kind::Int, Default::Value("0"), "Also mirror this many rollbacks (<0: all)."),
            REPOSITORIES,
            opt("codenames", Some('c'), Kind::List, Default::Server, "Codenames (default: all)."),
            opt(
                "architectures",
                Some('A'),
                Kind::Str,
                Default::Value("amd64,i386,arm64,armhf,armel,s390x,ppc64el,mipsel,mips64el"),
                "Architectures to mirror (debmirror's --arch; only those found are mirrored).",
            ),
            opt(
                "components",
                Some('C'),
                Kind::Str,
                Default::Value("main,contrib,non-free,main/debian-installer,multiverse,restricted,universe"),
                "Components to mirror (debmirror's --section; only those found are mirrored).",
            ),
            opt(
                "destination",
                Some('D'),
                Kind::Str,
                Default::Value("debmirror/{}"),
                "Where, below the state directory ({} is the repository); what is there is replaced by the mirror.",
            ),
        ],
    },
    Call {
        name: "start",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Start the daemon (accept uploads and builds).",
        args: &[],
    },
    Call {
        name: "stop",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Stop the daemon (the HTTP face keeps serving).",
        args: &[],
    },
    Call {
        name: "set_user_key",
        auth: Role::Login,
        needs_running: false,
        confirm: true,
        group: "Developer",
        doc: "Set your uploader key; an administrator activates it (config_action).",
        args: &[Arg {
            kind: Kind::Multiline,
            ..pos(
                "key",
                "The ASCII-armored public key, or (one line) its fingerprint or long id: a key this instance knows, else fetched from the keyserver (serve --keyserver), which must send that key.",
            )
        }],
    },
    Call {
        name: "subscribe",
        auth: Role::Login,
        needs_running: false,
        confirm: false,
        group: "Developer",
        doc: "Subscribe to a package's events (empty: all): they are mailed to the address set with set_user_email.",
        args: SUBSCRIPTION_ARGS,
    },
    Call {
        name: "set_user_email",
        auth: Role::Login,
        needs_running: false,
        confirm: false,
        group: "Developer",
        doc: "Set the address your subscriptions are mailed to (empty: none).",
        args: &[opt("email", None, Kind::Str, Default::Value(""), "A mail address, like you@example.org.")],
    },
    Call {
        name: "unsubscribe",
        auth: Role::Login,
        needs_running: false,
        confirm: false,
        group: "Developer",
        doc: "Remove matching subscriptions.",
        args: SUBSCRIPTION_ARGS,
    },
    Call {
        name: "token_create",
        auth: Role::Login,
        needs_running: false,
        confirm: true,
        group: "Developer",
        doc: "Create an API token for yourself (shown once), scoped to a role no higher than yours.",
        args: &[
            role("The token's role."),
            opt("label", None, Kind::Str, Default::Value(""), "What the token is for."),
            opt("expires_days", None, Kind::Int, Default::Value("90"), "Days until it expires (0: never)."),
        ],
    },
    Call {
        name: "token_ls",
        auth: Role::Login,
        needs_running: false,
        confirm: false,
        group: "Developer",
        doc: "Your API tokens (without their secrets).",
        args: &[],
    },
    Call {
        name: "token_revoke",
        auth: Role::Login,
        needs_running: false,
        confirm: true,
        group: "Developer",
        doc: "Revoke one of your API tokens.",
        args: &[pos("id", "Token id, as token_ls shows it.")],
    },
    Call {
        name: "config_ls",
        auth: Role::Admin,
        needs_running: false,
        confirm: false,
        group: "Administrator",
        doc: "Every configuration object: its status, why it is not active, what it needs and what needs it.",
        args: &[],
    },
    Call {
        name: "config_action",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Run a lifecycle action on one configuration object: prepare, check, activate, deactivate, remove (unprepare: a chroot's image and schroot config are deleted; other kinds keep their data), pca (all three), or delete a removed object.",
        args: &[
            Arg { choices: KINDS, ..pos("kind", "The object's kind.") },
            pos("id", "The object's id, as config_ls shows it (e.g. test, bookworm, bookworm:amd64)."),
            Arg { choices: crate::config::Action::NAMES, ..pos("action", "What to do.") },
        ],
    },
    Call {
        name: "config_set",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Create or change any configuration object from its fields as JSON (config_ls shows them). Its id comes from the fields. A changed object that was active is deactivated until it is prepared, checked and activated again; the answer says so.",
        args: &[
            Arg { choices: KINDS, ..pos("kind", "The object's kind.") },
            Arg {
                kind: Kind::Multiline,
                ..pos("object", "The object's fields as JSON, e.g. {\"codename\": \"bookworm\", …}.")
            },
            opt(
                "id",
                None,
                Kind::Str,
                Default::Server,
                "When changing: the object's id, which the fields must keep (a guard against creating a second object by mistake).",
            ),
        ],
    },
    Call {
        name: "repository_set",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Create a repository, or change one. A changed repository is deactivated until it is prepared, checked and activated again (config_action pca).",
        args: &[
            pos("identity", "Repository identity, e.g. test."),
            opt(
                "layout",
                None,
                Kind::Str,
                Default::Value("Default"),
                "Layout: Default, Default (no rollbacks) or Debian Developer.",
            ),
            opt("distributions", None, Kind::List, Default::Required, "Codenames, e.g. bookworm."),
            opt("allow_unauthenticated_uploads", None, Kind::Bool, Default::Server, "Accept unsigned uploads."),
        ],
    },
    Call {
        name: "user_add",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Create a user.",
        args: &[
            pos("name", "User name."),
            role("The user's role."),
            opt("password", None, Kind::Secret, Default::Required, "Initial password (at least 8 characters)."),
            opt("one_time", None, Kind::Bool, Default::Server, "The user must change the password at the first login."),
        ],
    },
    Call {
        name: "password_change",
        auth: Role::Login,
        needs_running: false,
        confirm: true,
        group: "Developer",
        doc: "Change your password (a one-time password must be changed before anything else).",
        args: &[
            opt("old_password", None, Kind::Secret, Default::Required, "Your current password."),
            opt("new_password", None, Kind::Secret, Default::Required, "The new one (at least 8 characters)."),
        ],
    },
    Call {
        name: "user_ls",
        auth: Role::Admin,
        needs_running: false,
        confirm: false,
        group: "Administrator",
        doc: "Every user with their role.",
        args: &[],
    },
    Call {
        name: "user_role",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Change a user's role; a demotion ends their sessions (their tokens never act above it).",
        args: &[pos("name", "User name."), role("The new role.")],
    },
    Call {
        name: "user_password",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Give a user a one-time password (they change it at the next login); ends their sessions and tokens.",
        args: &[
            pos("name", "User name."),
            opt("password", None, Kind::Secret, Default::Required, "The one-time password (at least 8 characters)."),
        ],
    },
    Call {
        name: "user_revoke",
        auth: Role::Login,
        needs_running: false,
        confirm: true,
        group: "Developer",
        doc: "End every session and revoke every token of a user (yourself, or anyone for an admin).",
        args: &[opt("name", None, Kind::Str, Default::Server, "User name (default: yourself).")],
    },
    Call {
        name: "user_remove",
        auth: Role::Admin,
        needs_running: false,
        confirm: true,
        group: "Administrator",
        doc: "Remove a user with their sessions and tokens (their uploader key stays until removed).",
        args: &[pos("name", "User name.")],
    },
];

/// mini-buildd's calls that buildbay does not answer (yet), each with the reason; the HTTP API
/// answers them with 501 and the reason, and the reference lists them.
pub const NOT_SUPPORTED: &[(&str, &str)] = &[];

/// Why a mini-buildd call is not supported, if it is one of those.
pub fn not_supported(name: &str) -> Option<&'static str> {
    NOT_SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, why)| *why)
}

pub fn find(name: &str) -> Option<&'static Call> {
    CALLS.iter().find(|c| c.name == name)
}

/// The API reference (docs/api.md), from this table: every call by group, with its auth level,
/// its HTTP form and its command line, and each argument.
pub fn markdown() -> String {
    let mut out = String::from(
        "# API reference\n\nGenerated from the call registry (`src/api/registry.rs`) by `buildbay api-reference`; \
         a unit test keeps this file equal to it. Every call is `GET /mini_buildd/api/<call>/?<arg>=<value>…` \
         (add `output=json` for JSON), as in mini-buildd 2.x, or a POST of the same arguments as a form, and \
         `buildbay api <call> …` on the command line. Calls that change things need `confirm=<call>` (`--confirm`), \
         and from a signed-in browser the CSRF token. A secret (a password) goes only in a POST body.\n",
    );
    let mut groups: Vec<&str> = CALLS.iter().map(|c| c.group).collect();
    groups.sort();
    groups.dedup();
    for group in groups {
        out.push_str(&format!("\n## {group}\n"));
        for c in CALLS.iter().filter(|c| c.group == group) {
            let mut cli = format!("buildbay api {}", c.name);
            for a in c.args {
                let shown = if a.positional {
                    a.name.to_uppercase()
                } else if a.kind == Kind::Bool {
                    a.flag()
                } else {
                    format!("{} …", a.flag())
                };
                if matches!(a.default, Default::Required) {
                    cli.push_str(&format!(" {shown}"));
                } else {
                    cli.push_str(&format!(" [{shown}]"));
                }
            }
            out.push_str(&format!("\n### `{}`\n\n{}\n\n", c.name, c.doc));
            let mut notes = vec![format!("auth: {}", c.auth.as_str())];
            if c.confirm {
                notes.push("needs confirm".into());
            }
            if c.needs_running {
                notes.push("503 while the daemon is stopped".into());
            }
            out.push_str(&format!("- {}\n- `{cli}`\n", notes.join("; ")));
            for a in c.args {
                let kind = match a.kind {
                    Kind::Str => "text",
                    Kind::Multiline => "text, several lines",
                    Kind::Bool => "flag",
                    Kind::Int => "integer",
                    Kind::List => "list (comma-separated over HTTP)",
                    Kind::Secret => "secret: POST only",
                };
                let default = match a.default {
                    Default::Required => "required".to_owned(),
                    Default::Server => "optional".to_owned(),
                    Default::Value(v) => format!("default `{v}`"),
                };
                let choices =
                    if a.choices.is_empty() { String::new() } else { format!("; one of `{}`", a.choices.join("`, `")) };
                out.push_str(&format!("- `{}` ({kind}, {default}{choices}): {}\n", a.name, a.doc));
            }
        }
    }
    out.push_str("\n## Not supported\n\nmini-buildd's calls that buildbay does not answer; over HTTP they get 501 with the reason.\n\n");
    for (name, why) in NOT_SUPPORTED {
        out.push_str(&format!("- `{name}`: {why}\n"));
    }
    if NOT_SUPPORTED.is_empty() {
        out.push_str("None: every call of mini-buildd 2.2's API is answered.\n");
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_bootstrap_presets_are_setup_arguments() {
        let setup = CALLS.iter().find(|c| c.name == "setup").expect("setup");
        for origin in crate::instance::BOOTSTRAP_ORIGINS {
            for (name, _) in crate::instance::bootstrap_preset(origin) {
                assert!(setup.args.iter().any(|a| a.name == name), "{name} is no argument of setup");
            }
        }
    }

    use super::*;

    #[test]
    fn the_api_reference_is_generated_from_the_registry() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        assert!(doc == markdown(), "docs/api.md is out of date: run `buildbay api-reference > docs/api.md`");
        assert!(doc.contains("### `migrate`") && doc.contains("auth: staff; needs confirm"));
    }

    #[test]
    fn registry_is_consistent() {
        let mut names: Vec<&str> = CALLS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CALLS.len(), "call names are unique");
        for c in CALLS {
            let mut seen = Vec::new();
            for a in c.args {
                assert!(!seen.contains(&a.name), "{}: duplicate argument {}", c.name, a.name);
                seen.push(a.name);
                assert!(a.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", a.name);
            }
        }
        assert_eq!(find("migrate").map(|c| (c.auth, c.confirm)), Some((Role::Staff, true)));
        assert_eq!(find("sources_list").unwrap().args[4].flag(), "--options");
    }
}
