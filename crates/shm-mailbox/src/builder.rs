//! [`MailboxBuilder`]: opening or creating a mailbox with options.

use shm_segment::AccessPolicy;

use crate::layout::Config;
use crate::mailbox::{Mailbox, MailboxError};

/// Opens or creates a [`Mailbox`] with options: returned by [`Mailbox::builder`].
///
/// # Examples
/// A board owned by the service running as uid 990, which the members of
/// group 4242 may open too:
/// ```no_run
/// use shm_mailbox::{AccessPolicy, Config, Mailbox};
///
/// let policy = AccessPolicy::owner(990).group(4242);
/// // In the owner (uid 990, a member of group 4242): creates it with group 4242, mode 0660.
/// let board = Mailbox::builder("board").access(policy.clone())
///     .open_or_create(Config { readers: 4, slot_bytes: 64 })?;
/// // In a member of group 4242: opens it after checking owner, group, mode and ACL.
/// let view = Mailbox::builder("board").access(policy).open()?;
/// let mut reader = view.reader(1)?;
/// # drop((reader.read(&mut [0; 64])?, board));
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
