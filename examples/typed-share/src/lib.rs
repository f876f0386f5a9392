//! The parts of the typed-share programs that are not the shared type: each
//! binary (`writer`, `reader`, `mismatched`) declares its own `Message` with
//! `shared_struct!`, as separately developed programs would, and they still
//! share segments because the layout fingerprint is structural. With
//! `--board` they share a typed mailbox instead, of a `Message` each declares
//! with `plain_struct!` (values copied, not viewed in place), recognised the
//! same way.
//!
//! Arguments: `NAME [--owner UID] [--group GID] [--uid UID]...`, where the
//! options make up the segment's [`AccessPolicy`]; each binary adds its own.

use std::sync::Arc;

use shm_mailbox::{Config, Mailbox, MailboxError, TypedMailbox};
use shm_segment::{AccessPolicy, Plain};

/// The segment name and access policy from the command line, and the
/// arguments left for the binary.
#[derive(Debug)]
pub struct Args {
    /// The segment's name.
    pub name: String,
    /// The access policy made of `--owner`, `--group` and `--uid`.
    pub policy: AccessPolicy,
    /// Everything else, in order.
    pub rest: Vec<String>,
}

impl Args {
    /// Parses `std::env::args`; `Err` is a usage message.
    pub fn parse(usage: &str) -> Result<Args, String> {
        let mut args = std::env::args().skip(1);
        let name = args.next().ok_or_else(|| format!("usage: {usage}"))?;
        let mut policy = AccessPolicy::same_uid();
        let mut rest = Vec::new();
        while let Some(arg) = args.next() {
            let mut number = || -> Result<u32, String> {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                value.parse().map_err(|e| format!("{arg} {value}: {e}"))
            };
            match arg.as_str() {
                "--owner" => policy = rebuild_with_owner(&policy, number()?),
                "--group" => policy = policy.group(number()?),
                "--uid" => policy = policy.uid(number()?),
                _ => rest.push(arg),
            }
        }
        Ok(Args { name, policy, rest })
    }

    /// Whether `flag` was given.
    pub fn has(&self, flag: &str) -> bool {
        self.rest.iter().any(|a| a == flag)
    }
}

fn rebuild_with_owner(policy: &AccessPolicy, owner: u32) -> AccessPolicy {
    let mut out = AccessPolicy::owner(owner);
    if let Some(gid) = policy.allowed_group() {
        out = out.group(gid);
    }
    for &uid in policy.allowed_uids() {
        out = out.uid(uid);
    }
    out
}

/// Runs `body`, printing its error and exiting 1 on failure, 2 on a usage error.
pub fn main_with(usage: &str, body: impl FnOnce(Args) -> Result<(), Box<dyn std::error::Error>>) {
    let args = match Args::parse(usage) {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = body(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
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
