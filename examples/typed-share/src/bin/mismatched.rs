//! Opens the writer's segment as a `Message` that differs from the writer's
//! in one way, chosen by `--variant`: a field renamed, two fields of the
//! nested stamp swapped, two of `Message`'s own fields swapped, a field
//! retyped, a nested struct's field renamed, or a tag added. Every one must be
//! refused; it prints the error and exits 1. With `--board`, opens the
//! writer's typed board as a plain `Message` that differs in the same ways.
//!
//! `mismatched NAME --variant renamed|reordered|swapped|retyped|nested|tagged [--board]`
#![allow(
    missing_docs,
    reason = "the fields are the writer's, documented there; each struct's doc says what differs"
)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64}; // atomics-ok: fields of a type shared across processes

use clap::Parser;
use shm_segment::{AccessPolicy, Layout, Plain, Segment, Shared, ShmBox, shared_struct};
use typed_share::Common;

#[derive(Debug, Parser)]
#[command(
    name = "mismatched",
    version,
    about = "Open a writer's segment (or, with --board, its typed board) as a Message that differs \
             in one way: every variant must be refused (exit 1)"
)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How this program's Message differs from the writer's.
    #[arg(long, value_enum)]
    variant: Variant,
}

/// The one difference from the writer's `Message`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Variant {
    /// A field renamed.
    Renamed,
    /// Two fields of the nested stamp swapped (same types, same size).
    Reordered,
    /// Two of `Message`'s own fields swapped: `stamp` and `temperature`
    /// (same size and alignment overall).
    Swapped,
    /// A field of another type (same size).
    Retyped,
    /// A field of the nested stamp renamed.
    Nested,
    /// The same fields with a tag added.
    Tagged,
}

shared_struct! {
    /// The writer's stamp.
    pub struct Stamp { pub seq: AtomicU64, pub micros: AtomicU64 }
}

mod renamed {
    use super::{AtomicI64, AtomicU32, Stamp, shared_struct};
    shared_struct! {
        /// `temperature` is now `celsius`.
        pub struct Message { pub stamp: Stamp, pub celsius: AtomicI64, pub samples: [AtomicU32; 4] }
    }
}

mod reordered {
    use super::{AtomicI64, AtomicU32, AtomicU64, shared_struct};
    shared_struct! {
        /// `seq` and `micros` swapped (same types, same size).
        pub struct Stamp { pub micros: AtomicU64, pub seq: AtomicU64 }
    }
    shared_struct! {
        /// Uses the reordered stamp.
        pub struct Message { pub stamp: Stamp, pub temperature: AtomicI64, pub samples: [AtomicU32; 4] }
    }
}

mod swapped {
    use super::{AtomicI64, AtomicU32, Stamp, shared_struct};
    shared_struct! {
        /// `stamp` and `temperature` swapped: same size and alignment.
        pub struct Message { pub temperature: AtomicI64, pub stamp: Stamp, pub samples: [AtomicU32; 4] }
    }
}

mod retyped {
    use super::{AtomicU32, AtomicU64, Stamp, shared_struct};
    shared_struct! {
        /// `temperature` is unsigned now.
        pub struct Message { pub stamp: Stamp, pub temperature: AtomicU64, pub samples: [AtomicU32; 4] }
    }
}

mod nested {
    use super::{AtomicI64, AtomicU32, AtomicU64, shared_struct};
    shared_struct! {
        /// The nested stamp's `seq` is now `sequence`.
        pub struct Stamp { pub sequence: AtomicU64, pub micros: AtomicU64 }
    }
    shared_struct! {
        /// Uses the changed stamp.
        pub struct Message { pub stamp: Stamp, pub temperature: AtomicI64, pub samples: [AtomicU32; 4] }
    }
}

mod tagged {
    use super::{AtomicI64, AtomicU32, Stamp, shared_struct};
    shared_struct! {
        /// The writer's fields, with a meaning of its own.
        #[shared(tag = "fahrenheit")]
        pub struct Message { pub stamp: Stamp, pub temperature: AtomicI64, pub samples: [AtomicU32; 4] }
    }
}

/// The writer's plain board message, changed in one way per module.
mod board {
    use shm_segment::plain_struct;

    plain_struct! {
        /// The writer's stamp.
        pub struct Stamp { pub seq: u64, pub micros: u64 }
    }

    pub(crate) mod renamed {
        use super::{Stamp, plain_struct};
        plain_struct! {
            /// `temperature` is now `celsius`.
            pub struct Message { pub stamp: Stamp, pub celsius: i64, pub samples: [u32; 4] }
        }
    }

    pub(crate) mod reordered {
        use super::plain_struct;
        plain_struct! {
            /// `seq` and `micros` swapped (same types, same size).
            pub struct Stamp { pub micros: u64, pub seq: u64 }
        }
        plain_struct! {
            /// Uses the reordered stamp.
            pub struct Message { pub stamp: Stamp, pub temperature: i64, pub samples: [u32; 4] }
        }
    }

    pub(crate) mod swapped {
        use super::{Stamp, plain_struct};
        plain_struct! {
            /// `stamp` and `temperature` swapped: same size and alignment.
            pub struct Message { pub temperature: i64, pub stamp: Stamp, pub samples: [u32; 4] }
        }
    }

    pub(crate) mod retyped {
        use super::{Stamp, plain_struct};
        plain_struct! {
            /// `temperature` is unsigned now.
            pub struct Message { pub stamp: Stamp, pub temperature: u64, pub samples: [u32; 4] }
        }
    }

    pub(crate) mod nested {
        use super::plain_struct;
        plain_struct! {
            /// The nested stamp's `seq` is now `sequence`.
            pub struct Stamp { pub sequence: u64, pub micros: u64 }
        }
        plain_struct! {
            /// Uses the changed stamp.
            pub struct Message { pub stamp: Stamp, pub temperature: i64, pub samples: [u32; 4] }
        }
    }

    pub(crate) mod tagged {
        use super::{Stamp, plain_struct};
        plain_struct! {
            /// The writer's fields, with a meaning of its own.
            #[plain(tag = "fahrenheit")]
            pub struct Message { pub stamp: Stamp, pub temperature: i64, pub samples: [u32; 4] }
        }
    }
}

/// Opens the writer's board as a `T`: must be refused.
fn open_board_as<T: Plain>(common: &Common) -> Result<(), Box<dyn std::error::Error>> {
    typed_share::open_board::<T>(&common.name, common.policy())?;
    println!("opened the board as {}", T::PLAIN_LAYOUT);
    Ok(())
}

/// Opens the writer's segment as a `T`: must be refused.
fn open_as<T: Shared>(name: &str, policy: AccessPolicy) -> Result<(), Box<dyn std::error::Error>> {
    // Through the builder (checked at open) and through ShmBox::new on a raw
    // open (checked when viewed): both must refuse.
    let by_builder = Segment::builder(name)
        .layout::<T>()
        .access(policy.clone())
        .open();
    let raw = Segment::builder(name).access(policy).open()?;
    let by_box = ShmBox::<T>::new(raw);
    if let (Err(a), Err(b)) = (by_builder, by_box) {
        println!("{b}");
        return Err(a.into());
    }
    println!("opened as {}", Layout::of::<T>());
    Ok(())
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let common = &args.common;
    if common.board {
        return match args.variant {
            Variant::Renamed => open_board_as::<board::renamed::Message>(common),
            Variant::Reordered => open_board_as::<board::reordered::Message>(common),
            Variant::Swapped => open_board_as::<board::swapped::Message>(common),
            Variant::Retyped => open_board_as::<board::retyped::Message>(common),
            Variant::Nested => open_board_as::<board::nested::Message>(common),
            Variant::Tagged => open_board_as::<board::tagged::Message>(common),
        };
    }
    let (name, policy) = (common.name.as_str(), common.policy());
    match args.variant {
        Variant::Renamed => open_as::<renamed::Message>(name, policy),
        Variant::Reordered => open_as::<reordered::Message>(name, policy),
        Variant::Swapped => open_as::<swapped::Message>(name, policy),
        Variant::Retyped => open_as::<retyped::Message>(name, policy),
        Variant::Nested => open_as::<nested::Message>(name, policy),
        Variant::Tagged => open_as::<tagged::Message>(name, policy),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.common.log.init("mismatched");
    typed_share::exit_status("mismatched", run(&args))
}
