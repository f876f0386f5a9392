//! [`AccessPolicy`]: which users share a named object, and how the object's
//! owner, group, mode and ACL express it.
//!
//! # The rules
//!
//! - **Owner.** Every named object has one owner uid (by default our own
//!   effective uid, as [`AccessPolicy::same_uid`]). Only a process running as
//!   the owner creates the object, and only the owner ever unlinks it: dropping
//!   an owning handle, last-one-out, reclaiming a stale object and
//!   [`Segment::remove`](super::Segment::remove) all check that the object
//!   belongs to our effective uid. Other users of the object, even ones the
//!   policy lets in, never unlink or reclaim it: a stale object they find
//!   (its users were killed) is opened as it is, and its owner reclaims it on
//!   its next start. (`/dev/shm` is sticky, so the kernel already refuses
//!   unlinks by other unprivileged users; the check makes root and
//!   `CAP_FOWNER` processes follow the same rule.)
//! - **Group.** [`AccessPolicy::group`] lets the members of one group in
//!   (by effective or supplementary gid): the object is created with that
//!   group and mode 0660.
//! - **Uids.** [`AccessPolicy::uid`] lets further users in, each through a
//!   POSIX ACL entry on the object (`system.posix_acl_access`) with the
//!   group-class bits of the mode; the mode's group bits are then the ACL
//!   mask, as `ls -l` shows them.
//! - **Checked at open.** The opener checks, before mapping anything, that
//!   the object is owned by the policy's owner, that its group is the
//!   policy's group (if any), that its mode is the expected one (the
//!   builder's [`mode`](super::SegmentBuilder::mode), by default 0600, or
//!   0660 when the policy lets anyone else in), that its ACL grants exactly
//!   the policy's uids, and that this process is one the policy lets in.
//!   Any failure is [`SegmentError::AccessDenied`](super::SegmentError::AccessDenied)
//!   naming the object, its owner, group and mode, and the policy. The kernel
//!   enforces the same bits for processes that do not use this library.

use core::fmt;
use std::os::fd::BorrowedFd;

use rustix::fs::Gid;
use rustix::io::Errno;

/// Which users share a named segment: its owner, and optionally the members
/// of one group and further uids (see the [module docs](self)).
///
/// Modelled on `shm_ring::UidPolicy`: [`AccessPolicy::same_uid`] is the
/// default, [`AccessPolicy::owner`] names another owner.
///
/// # Examples
/// One user (the default): the object is ours with mode 0600, an opener
/// checks that it still is, and a policy the object does not match is
/// refused before anything is mapped:
/// ```
/// use std::os::unix::fs::{MetadataExt, PermissionsExt};
/// use shm_segment::{AccessPolicy, Segment, SegmentError};
///
/// let name = format!("doc-access-{}", std::process::id());
/// let policy = AccessPolicy::same_uid();
/// let seg = Segment::builder(&name).size(4096).access(policy.clone()).create()?;
/// let meta = std::fs::metadata(format!("/dev/shm/{name}"))?;
/// assert_eq!(meta.uid(), policy.owner_uid());
/// assert_eq!(meta.permissions().mode() & 0o777, 0o600);
///
/// // Another process of the same user: checks owner, group, mode and ACL, then opens.
/// let view = Segment::builder(&name).size(4096).access(policy.clone()).read_only().open()?;
/// // A policy that expects the object to belong to another group does not match it.
/// let other_group = AccessPolicy::same_uid().group(meta.gid().wrapping_add(1));
/// let refused = Segment::builder(&name).size(4096).access(other_group).open();
/// assert!(matches!(refused, Err(SegmentError::AccessDenied { .. })));
/// // Nobody else is let in.
/// assert!(!policy.admits(policy.owner_uid().wrapping_add(1), &[]));
///
/// drop(view);
/// drop(seg); // the owner unlinks the name
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Shared with a group: a writer service running as uid 990 shares its
/// segment with the members of group 4242 (say, the services that read it)
/// through `AccessPolicy::owner(990).group(4242)`. Here the owner and the
/// group are this process's own effective uid and gid, so the example runs
/// anywhere:
/// ```
/// use std::os::unix::fs::{MetadataExt, PermissionsExt};
/// use shm_segment::{AccessPolicy, Segment};
///
/// let name = format!("doc-access-group-{}", std::process::id());
/// let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
/// let policy = AccessPolicy::owner(uid.as_raw()).group(gid.as_raw());
/// // In the writer (the owner, a member of the group): the policy's group, mode 0660.
/// let seg = Segment::builder(&name).size(4096).access(policy.clone()).open_or_create()?;
/// let meta = std::fs::metadata(format!("/dev/shm/{name}"))?;
/// assert_eq!((meta.gid(), meta.permissions().mode() & 0o777), (gid.as_raw(), 0o660));
/// // In a reader (any uid in the group): checks owner, group, mode and ACL, then opens.
/// let view = Segment::builder(&name).size(4096).access(policy).read_only().open()?;
/// drop(view);
/// drop(seg);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[must_use]
pub struct AccessPolicy {
    /// `None`: our effective uid, whatever it is when the object is used.
    owner: Option<u32>,
    group: Option<u32>,
    /// Sorted, without duplicates.
    uids: Vec<u32>,
}

/// An object's owner, group and permission bits, as `fstat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectAccess {
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Permission bits (`st_mode & 0o777`).
    pub mode: u32,
}

impl fmt::Display for ObjectAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "owner uid {}, group gid {}, mode {:#o}",
            self.uid, self.gid, self.mode
        )
    }
}

impl ObjectAccess {
    pub(super) fn of(stat: &rustix::fs::Stat) -> ObjectAccess {
        ObjectAccess {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o777,
        }
    }
}

/// The ACL extended attribute and its encoding (`linux/posix_acl_xattr.h`).
const ACL_XATTR: &str = "system.posix_acl_access";
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

impl AccessPolicy {
    /// Only processes running as our effective uid: the object is theirs,
    /// mode 0600 (the default policy).
    pub fn same_uid() -> AccessPolicy {
        AccessPolicy::default()
    }

    /// Objects owned by `uid`: only a process running as `uid` creates,
    /// reclaims or removes them; others open them if [`group`](Self::group)
    /// or [`uid`](Self::uid) lets them in.
    pub fn owner(uid: u32) -> AccessPolicy {
        AccessPolicy {
            owner: Some(uid),
            ..AccessPolicy::default()
        }
    }

    /// Also lets in the members of group `gid` (effective or supplementary):
    /// the object gets that group, and mode 0660 unless the builder says
    /// otherwise.
    pub fn group(mut self, gid: u32) -> AccessPolicy {
        self.group = Some(gid);
        self
    }

    /// Also lets in the user `uid`, through a POSIX ACL entry on the object.
    pub fn uid(mut self, uid: u32) -> AccessPolicy {
        if let Err(at) = self.uids.binary_search(&uid) {
            self.uids.insert(at, uid);
        }
        self
    }

    /// The owner uid: the one given, or our effective uid.
    pub fn owner_uid(&self) -> u32 {
        self.owner
            .unwrap_or_else(|| rustix::process::geteuid().as_raw())
    }

    /// The group let in, if any.
    pub fn allowed_group(&self) -> Option<u32> {
        self.group
    }

    /// The further uids let in (sorted).
    pub fn allowed_uids(&self) -> &[u32] {
        &self.uids
    }

    /// Whether a process of effective uid `uid`, in groups `gids`, may use
    /// the object.
    pub fn admits(&self, uid: u32, gids: &[u32]) -> bool {
        uid == self.owner_uid()
            || self.group.is_some_and(|g| gids.contains(&g))
            || self.uids.binary_search(&uid).is_ok()
    }

    /// Whether this process runs as the owner.
    pub(super) fn we_own(&self) -> bool {
        rustix::process::geteuid().as_raw() == self.owner_uid()
    }

    /// The uids with ACL entries: the allowed ones but the owner.
    fn acl_uids(&self) -> impl Iterator<Item = u32> + '_ {
        let owner = self.owner_uid();
        self.uids.iter().copied().filter(move |&u| u != owner)
    }

    /// The mode used when the builder sets none: 0600, or 0660 when anyone
    /// besides the owner is let in.
    pub(super) fn default_mode(&self) -> u32 {
        if self.group.is_some() || self.acl_uids().next().is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// The ACL xattr value for an object of `mode`, or `None` when the mode
    /// bits say everything (no extra uids).
    fn acl(&self, mode: u32) -> Option<Vec<u8>> {
        let uids: Vec<u32> = self.acl_uids().collect();
        if uids.is_empty() {
            return None;
        }
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        let group_class = bits(3);
        let mut out = ACL_VERSION.to_le_bytes().to_vec();
        let mut entry = |tag: u16, perm: u16, id: u32| {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        };
        entry(ACL_USER_OBJ, bits(6), ACL_UNDEFINED_ID);
        for uid in uids {
            entry(ACL_USER, group_class, uid);
        }
        let group_obj = if self.group.is_some() { group_class } else { 0 };
        entry(ACL_GROUP_OBJ, group_obj, ACL_UNDEFINED_ID);
        entry(ACL_MASK, group_class, ACL_UNDEFINED_ID);
        entry(ACL_OTHER, bits(0), ACL_UNDEFINED_ID);
        Some(out)
    }

    /// Gives a freshly created object (of our euid) the policy's group and
    /// ACL; the caller sets the mode first.
    pub(super) fn apply(&self, fd: BorrowedFd<'_>, mode: u32) -> Result<(), (&'static str, Errno)> {
        if let Some(gid) = self.group {
            rustix::fs::fchown(fd, None, Some(Gid::from_raw(gid))).map_err(|e| ("fchown", e))?;
            // chown may clear mode bits (set-group-id); restore the mode.
            rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode))
                .map_err(|e| ("fchmod", e))?;
        }
        match self.acl(mode) {
            Some(acl) => {
                rustix::fs::fsetxattr(fd, ACL_XATTR, &acl, rustix::fs::XattrFlags::empty())
                    .map_err(|e| ("fsetxattr system.posix_acl_access", e))
            }
            // An ACL inherited from a default ACL of /dev/shm would grant more
            // than the policy: drop it (the mode bits then say everything).
            None => match rustix::fs::fremovexattr(fd, ACL_XATTR) {
                Ok(()) | Err(Errno::NODATA | Errno::NOTSUP) => Ok(()),
                Err(e) => Err(("fremovexattr system.posix_acl_access", e)),
            },
        }
    }

    /// Checks an object's owner and group against the policy, and that the
    /// policy lets this process in. `Err(reason)` if refused.
    pub(super) fn check_identity(&self, object: ObjectAccess) -> Result<(), String> {
        let owner = self.owner_uid();
        if object.uid != owner {
            return Err(format!(
                "the object belongs to uid {}, the policy's owner is uid {owner}",
                object.uid
            ));
        }
        self.check_caller()?;
        match self.group {
            Some(gid) if object.gid != gid => Err(format!(
                "the object's group is gid {}, the policy's is gid {gid}",
                object.gid
            )),
            _ => Ok(()),
        }
    }

    /// Checks that the ACL of the object open as `fd` (of permission bits
    /// `mode`) grants exactly the policy's uids. `Err(reason)` if not.
    pub(super) fn check_acl(&self, fd: BorrowedFd<'_>, mode: u32) -> Result<(), String> {
        let want = self.acl(mode);
        let mut buf = [0u8; 4096];
        let have = match rustix::fs::fgetxattr(fd, ACL_XATTR, &mut buf[..]) {
            Ok(n) => Some(&buf[..n]),
            Err(Errno::NODATA | Errno::NOTSUP) => None,
            Err(e) => return Err(format!("cannot read its ACL: {e}")),
        };
        if have == want.as_deref() {
            Ok(())
        } else if want.is_none() {
            Err("the object carries an ACL that lets in users the policy does not".to_owned())
        } else {
            Err("the object's ACL does not grant exactly the policy's uids".to_owned())
        }
    }

    /// `Err(reason)` unless the policy lets this process in.
    pub(super) fn check_caller(&self) -> Result<(), String> {
        let uid = rustix::process::geteuid().as_raw();
        let mut gids: Vec<u32> = rustix::process::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        gids.push(rustix::process::getegid().as_raw());
        if self.admits(uid, &gids) {
            return Ok(());
        }
        gids.sort_unstable();
        gids.dedup();
        Err(format!(
            "this process (uid {uid}, groups {gids:?}) is not one the policy lets in"
        ))
    }
}

impl fmt::Display for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.owner {
            None => write!(f, "same uid (owner uid {})", self.owner_uid())?,
            Some(uid) => write!(f, "owner uid {uid}")?,
        }
        if let Some(gid) = self.group {
            write!(f, " + group gid {gid}")?;
        }
        if !self.uids.is_empty() {
            write!(f, " + uids {:?}", self.uids)?;
        }
        if self.group.is_none() && self.uids.is_empty() {
            f.write_str(" only")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_owner_group_and_uids_only() {
        let sut = AccessPolicy::owner(1000).group(4242).uid(65534);
        assert!(sut.admits(1000, &[]));
        assert!(sut.admits(7, &[1, 4242]));
        assert!(sut.admits(65534, &[]));
        assert!(!sut.admits(7, &[1, 2]));
        assert!(
            !AccessPolicy::owner(1000).admits(0, &[0]),
            "root is not special"
        );
    }

    #[test]
    fn default_mode_opens_the_group_class_only_when_someone_else_is_let_in() {
        assert_eq!(AccessPolicy::owner(1).default_mode(), 0o600);
        assert_eq!(AccessPolicy::owner(1).uid(1).default_mode(), 0o600);
        assert_eq!(AccessPolicy::owner(1).group(2).default_mode(), 0o660);
        assert_eq!(AccessPolicy::owner(1).uid(2).default_mode(), 0o660);
    }

    #[test]
    fn acl_is_sorted_and_masked() {
        let sut = AccessPolicy::owner(1).uid(9).uid(3).uid(9);
        let acl = sut.acl(0o640).unwrap();
        let entries: Vec<(u16, u16, u32)> = acl[4..]
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
                (ACL_USER, 4, 3),
                (ACL_USER, 4, 9),
                (ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID),
                (ACL_MASK, 4, ACL_UNDEFINED_ID),
                (ACL_OTHER, 0, ACL_UNDEFINED_ID),
            ]
        );
    }

    #[test]
    fn display_names_every_part() {
        let sut = AccessPolicy::owner(1000).group(4242).uid(65534);
        assert_eq!(
            sut.to_string(),
            "owner uid 1000 + group gid 4242 + uids [65534]"
        );
        assert_eq!(AccessPolicy::owner(5).to_string(), "owner uid 5 only");
    }
}
