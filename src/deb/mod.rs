//! Debian formats: names, versions, deb822 stanzas, `.changes`/`.dsc`, `.deb` control, changelogs.
//!
//! Pure code: nothing here writes files or knows about repositories.

pub mod builddeps;
pub mod changelog;
pub mod changes;
pub mod checksum;
pub mod control;
pub mod debfile;
pub mod names;
pub mod relations;
pub mod release;
pub mod version;

pub use changes::{Changes, Dsc, FileEntry};
pub use checksum::Checksums;
pub use control::Stanza;
pub use names::{
    Arch, ArchiveSuite, ArchiveUrl, Codename, Component, Dist, FileName, Identity, PackageName, RepoId, SnapshotName,
    Suite,
};
pub use release::Release;
pub use version::Version;
