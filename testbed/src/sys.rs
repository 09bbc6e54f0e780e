//! The two system calls the emulator needs that the standard library lacks: entering a network namespace
//! (`setns`) and attaching to a TUN interface (`TUNSETIFF`). The only unsafe code of the testbed.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Moves the calling thread into the network namespace `name` (`/var/run/netns/NAME`, as `ip netns add`
/// makes it).
pub fn enter_netns(name: &str) -> io::Result<()> {
    let ns = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: a valid open namespace file descriptor and a valid flag; setns does not touch memory.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union is padding).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches to the TUN interface `name` of the current network namespace (layer 3, no packet-info header),
/// blocking (the emulator reads and writes on threads of its own). The interface is created beforehand (`ip tuntap add dev NAME mode tun`).
pub fn open_tun(name: &str) -> io::Result<File> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name \"{name}\""),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is (name, flags, padding to the union's size) and which
    // lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}
