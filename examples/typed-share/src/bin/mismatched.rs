//! Opens the writer's segment as a `Message` that differs from the writer's
//! in one way, chosen by `--variant`: a field renamed, two fields swapped, a
//! field retyped, a nested struct's field renamed, or a tag added. Every one
//! must be refused; it prints the error and exits 1. With `--board`, opens the
//! writer's typed board as a plain `Message` that differs in the same ways.
//!
//! `mismatched NAME --variant renamed|reordered|retyped|nested|tagged [--board]`
#![allow(
    missing_docs,
    reason = "the fields are the writer's, documented there; each struct's doc says what differs"
)]

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64}; // atomics-ok: fields of a type shared across processes

use shm_segment::{Layout, Plain, Segment, Shared, ShmBox, shared_struct};

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
fn open_board_as<T: Plain>(args: &typed_share::Args) -> Result<(), Box<dyn std::error::Error>> {
    typed_share::open_board::<T>(&args.name, args.policy.clone())?;
    println!("opened the board as {}", T::PLAIN_LAYOUT);
    Ok(())
}

fn open_as<T: Shared>(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    // Through the builder (checked at open) and through ShmBox::new on a raw
    // open (checked when viewed): both must refuse.
    let by_builder = Segment::builder(name).layout::<T>().open();
    let raw = Segment::builder(name).open()?;
    let by_box = ShmBox::<T>::new(raw);
    if let (Err(a), Err(b)) = (by_builder, by_box) {
        println!("{b}");
        return Err(a.into());
    }
    println!("opened as {}", Layout::of::<T>());
    Ok(())
}

fn main() {
    typed_share::main_with(
        "mismatched NAME --variant renamed|reordered|retyped|nested|tagged [--board]",
        |args| {
            let variant = args
                .rest
                .iter()
                .skip_while(|a| *a != "--variant")
                .nth(1)
                .map(String::as_str);
            if args.has("--board") {
                return match variant {
                    Some("renamed") => open_board_as::<board::renamed::Message>(&args),
                    Some("reordered") => open_board_as::<board::reordered::Message>(&args),
                    Some("retyped") => open_board_as::<board::retyped::Message>(&args),
                    Some("nested") => open_board_as::<board::nested::Message>(&args),
                    Some("tagged") => open_board_as::<board::tagged::Message>(&args),
                    other => Err(format!("unknown variant {other:?}").into()),
                };
            }
            match variant {
                Some("renamed") => open_as::<renamed::Message>(&args.name),
                Some("reordered") => open_as::<reordered::Message>(&args.name),
                Some("retyped") => open_as::<retyped::Message>(&args.name),
                Some("nested") => open_as::<nested::Message>(&args.name),
                Some("tagged") => open_as::<tagged::Message>(&args.name),
                other => Err(format!("unknown variant {other:?}").into()),
            }
        },
    );
}
