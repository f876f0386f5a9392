//! [`ShmBox`]: a typed view of a segment's payload.
//!
//! # Safety
//!
//! `ShmBox<T>` keeps a pointer to the payload of the segment it owns; the
//! segment's mapping lives as long as the box, and `T: Shared` makes `&T`
//! into memory other processes write sound (see [`Shared`]).
#![allow(unsafe_code)]

use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;

use crate::segment::{Segment, SegmentError};
use crate::shared::Shared;

/// A `T` living in a shared segment, viewed as `&T`.
///
/// Only [`Shared`] types qualify: their every mutable byte is an atomic, so
/// other processes may write while we hold `&T`. There is no `DerefMut`:
/// `&mut T` into memory another process can write would be unsound. `Send`
/// and `Sync` follow `T`.
///
/// # Examples
/// ```
/// use shm_segment::{Segment, ShmBox, shared_struct};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// shared_struct! { struct Hits { n: AtomicU64 } }
///
/// let name = format!("doc-box-{}", std::process::id());
/// let hits: ShmBox<Hits> = ShmBox::new(Segment::builder(&name).layout::<Hits>().create()?)?;
/// hits.n.fetch_add(1, Ordering::Relaxed);
/// let other: ShmBox<Hits> = ShmBox::new(Segment::builder(&name).layout::<Hits>().open()?)?;
/// assert_eq!(other.n.load(Ordering::Relaxed), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ShmBox<T> {
    ptr: NonNull<T>,
    segment: Segment,
    _t: PhantomData<T>,
}

// SAFETY: the box is a handle to a `T` in shared memory; sending it sends
// access to that `T`, which is sound when `T: Send + Sync` (it is accessed by
// `&T` only, possibly from several threads via other handles).
unsafe impl<T: Send + Sync> Send for ShmBox<T> {}
// SAFETY: `&ShmBox<T>` only gives `&T`, which is shareable when `T: Sync`.
unsafe impl<T: Sync> Sync for ShmBox<T> {}

impl<T: Shared> ShmBox<T> {
    /// Views `segment`'s payload as a `T`.
    ///
    /// Fails with [`SegmentError::LayoutMismatch`] unless the segment was
    /// created for exactly this type (`.layout::<T>()`), and refuses read-only
    /// mappings (atomics in them could not be used).
    pub fn new(segment: Segment) -> Result<ShmBox<T>, SegmentError> {
        let name = segment.name().unwrap_or("memfd").to_owned();
        if segment.layout() != T::SHARED_LAYOUT {
            return Err(SegmentError::LayoutMismatch {
                name,
                expected: Box::new(T::SHARED_LAYOUT),
                found: Box::new(segment.layout()),
            });
        }
        let value: &T = segment
            .payload()
            .get::<T>(0)
            .map_err(|_| SegmentError::Corrupt {
                name,
                what: "payload is read-only, too small or misaligned for the type",
            })?;
        let ptr = NonNull::from(value);
        Ok(ShmBox {
            ptr,
            segment,
            _t: PhantomData,
        })
    }

    /// The segment holding the value.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Gives the segment back.
    pub fn into_segment(self) -> Segment {
        self.segment
    }

    /// Keeps the named object after the box drops (see [`Segment::leak`]).
    pub fn leak(self) {
        self.segment.leak();
    }

    /// Takes ownership of the named object (see [`Segment::own`]).
    pub fn own(&mut self) {
        self.segment.own();
    }
}

impl<T: Shared> Deref for ShmBox<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY:
        // - `ptr` points into the payload of `self.segment`, whose mapping lives
        //   as long as `self` and so outlives the returned borrow;
        // - it was produced by `Region::get::<T>`, which checked bounds,
        //   alignment and writability;
        // - `T: Shared`: any bits are a valid `T` and all mutation by others is
        //   through atomics, so `&T` is sound while they write.
        unsafe { self.ptr.as_ref() }
    }
}
