//! The parts of the typed-share programs that are not the shared type: each
//! binary (`writer`, `reader`, `mismatched`) declares its own `Message` with
//! `shared_struct!`, as separately developed programs would, and they still
//! share segments because the layout fingerprint is structural. With
//! `--board` they share a typed mailbox instead, of a `Message` each declares
//! with `plain_struct!` (values copied, not viewed in place), recognised the
//! same way.
//!
//! Every binary takes `NAME [--owner UID] [--group GID] [--uid UID]...
//! [--board]` ([`Common`]: the options make up the object's
//! [`AccessPolicy`]) and the conventions of every outlive binary: `--help`,
//! `--version`, `-q`/`-v`, usage errors exit 2, other errors 1.

use std::process::ExitCode;
use std::sync::Arc;

use shm_mailbox::{Config, Mailbox, MailboxError, TypedMailbox};
use shm_segment::{AccessPolicy, Plain};

/// The arguments every typed-share binary takes: flatten into its own
/// (`#[command(flatten)] common: Common`).
#[derive(Debug, clap::Args)]
#[allow(
    clippy::doc_markdown,
    reason = "the field docs are --help text, shown verbatim"
)]
pub struct Common {
    /// Shared-memory name of the segment (or, with --board, of the board).
    pub name: String,
    /// Owner uid of the object (default: this process's effective uid).
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
    /// Let this group in too.
    #[arg(long, value_name = "GID")]
    pub group: Option<u32>,
    /// Let this uid in too (repeat for more).
    #[arg(long = "uid", value_name = "UID")]
    pub uids: Vec<u32>,
    /// Share a typed board (a mailbox of a plain_struct! Message) instead of
    /// a segment holding a shared_struct! Message.
    #[arg(long)]
    pub board: bool,
    #[command(flatten)]
    #[allow(
        missing_docs,
        reason = "flattened: its fields are the documented -q/-v"
    )]
    pub log: shm_fd::cli::Verbosity,
}

impl Common {
    /// The access policy made of `--owner`, `--group` and `--uid`.
    pub fn policy(&self) -> AccessPolicy {
        let mut policy = self
            .owner
            .map_or_else(AccessPolicy::same_uid, AccessPolicy::owner);
        if let Some(gid) = self.group {
            policy = policy.group(gid);
        }
        for &uid in &self.uids {
            policy = policy.uid(uid);
        }
        policy
    }
}

/// The exit status of a binary's run: 0, or 1 after printing the error as
/// `PROGRAM: error` (clap has already exited 2 on a usage error).
pub fn exit_status(program: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the typed board `name` for values of `T` (two readers), under
/// `policy`, and binds it to `T`'s structure.
pub fn create_board<T: Plain>(
    name: &str,
    policy: AccessPolicy,
) -> Result<TypedMailbox<T>, MailboxError> {
    let config = Config {
        readers: 2,
        slot_bytes: size_of::<T>(),
    };
    let mailbox = Mailbox::builder(name)
        .access(policy)
        .open_or_create(config)?;
    TypedMailbox::new(Arc::new(mailbox))
}

/// Opens the existing typed board `name` under `policy` as one of `T`: refused
/// unless `T` has the structure the board was bound to.
pub fn open_board<T: Plain>(
    name: &str,
    policy: AccessPolicy,
) -> Result<TypedMailbox<T>, MailboxError> {
    TypedMailbox::new(Arc::new(Mailbox::builder(name).access(policy).open()?))
}
