//! [`MailboxBuilder`]: opening or creating a mailbox with options.

use shm_segment::AccessPolicy;

use crate::layout::Config;
use crate::mailbox::{Mailbox, MailboxError};

/// Opens or creates a [`Mailbox`] with options: returned by [`Mailbox::builder`].
///
/// # Examples
/// A board owned by one user which the members of a group may open too.
/// Here both are this process's own (effective uid and gid), so the example
/// runs anywhere; a service running as uid 990 that shares its board with
/// group 4242 writes `AccessPolicy::owner(990).group(4242)` the same way.
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// use shm_mailbox::{AccessPolicy, Config, Mailbox};
///
/// let name = format!("doc-builder-{}", std::process::id());
/// let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
/// let policy = AccessPolicy::owner(uid.as_raw()).group(gid.as_raw());
/// // In the owner: creates it with the policy's group, mode 0660.
/// let board = Mailbox::builder(&name)
///     .access(policy.clone())
///     .open_or_create(Config { readers: 4, slot_bytes: 64 })?;
/// let mode = std::fs::metadata(format!("/dev/shm/{name}"))?.permissions().mode();
/// assert_eq!(mode & 0o777, 0o660);
/// board.writer()?.publish(b"open")?;
///
/// // In a member of the group: opens it after checking owner, group, mode and ACL.
/// let view = Mailbox::builder(&name).access(policy).open()?;
/// let mut reader = view.reader(1)?;
/// let mut buf = [0; 64];
/// let msg = reader.read(&mut buf)?.expect("published");
/// assert_eq!(&buf[..msg.len], b"open");
///
/// drop(reader);
/// drop(view);
/// drop(board);
/// assert!(Mailbox::remove(&name)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct MailboxBuilder {
    name: String,
    policy: AccessPolicy,
}

impl Mailbox {
    /// A builder for the mailbox `name`, for the options that
    /// [`Mailbox::open`] and [`Mailbox::open_or_create`] leave at their
    /// defaults.
    pub fn builder(name: &str) -> MailboxBuilder {
        MailboxBuilder {
            name: name.to_owned(),
            policy: AccessPolicy::default(),
        }
    }
}

impl MailboxBuilder {
    /// Which users share the mailbox (default [`AccessPolicy::same_uid`]):
    /// its owner (the only one who creates or removes it) and optionally a
    /// group and further uids. The mailbox's object gets the policy's group,
    /// mode and ACL when created, and is checked against them when opened;
    /// see `shm_segment::segment::access` for the rules.
    pub fn access(mut self, policy: AccessPolicy) -> MailboxBuilder {
        self.policy = policy;
        self
    }

    /// Opens the existing mailbox, of whatever shape it has.
    pub fn open(self) -> Result<Mailbox, MailboxError> {
        Mailbox::open_in(&self.name, &self.policy)
    }

    /// Opens the mailbox, creating it with `config` if it does not exist (only
    /// the policy's owner creates). An existing mailbox of another shape is
    /// refused.
    pub fn open_or_create(self, config: Config) -> Result<Mailbox, MailboxError> {
        Mailbox::open_or_create_in(&self.name, config, &self.policy)
    }
}
