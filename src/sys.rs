//! Operating-system specifics, in one module: the thread's `errno` and the
//! primitives behind executable memory.

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe extern "C" {
    #[link_name = "__errno_location"]
    fn errno_location_raw() -> *mut i32;
}

#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
unsafe extern "C" {
    #[link_name = "__error"]
    fn errno_location_raw() -> *mut i32;
}

#[cfg(windows)]
unsafe extern "C" {
    #[link_name = "_errno"]
    fn errno_location_raw() -> *mut i32;
}

/// The address of the calling thread's `errno` (stable for the thread's life).
pub(crate) fn errno_location() -> *mut i32 {
    // SAFETY: the C library returns a valid pointer to the calling thread's errno.
    unsafe { errno_location_raw() }
}

/// The calling thread's `errno`.
#[inline(always)]
pub(crate) fn errno() -> i32 {
    // SAFETY: a valid, aligned pointer to this thread's errno.
    unsafe { *errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline(always)]
pub(crate) fn set_errno(value: i32) {
    // SAFETY: as in `errno`; the location is thread-local and writable.
    unsafe { *errno_location() = value }
}

/// Executable-memory primitives (POSIX). Each returns the OS error on failure.
pub(crate) mod exec {
    use std::io;

    /// The page size.
    pub(crate) fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 { n as usize } else { 4096 }
    }

    /// Changes the protection of whole pages.
    ///
    /// # Safety
    /// `addr..addr+len` must be pages of a mapping this process owns, and no
    /// code may be executing in (or be about to execute) pages made non-executable.
    pub(crate) unsafe fn protect(addr: *mut u8, len: usize, exec: bool) -> io::Result<()> {
        let prot = if exec {
            libc::PROT_READ | libc::PROT_EXEC
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: by the caller's contract.
        let r = unsafe { libc::mprotect(addr.cast(), len, prot) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// An anonymous in-memory file for dual mapping (Linux `memfd_create`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn code_file(len: usize) -> io::Result<std::fs::File> {
        use std::os::fd::FromRawFd;
        // SAFETY: the name is a valid NUL-terminated string; flags are valid.
        let fd = unsafe { libc::memfd_create(c"tierbridge-code".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        Ok(file)
    }

    /// Dual mapping needs `memfd_create`, which this OS does not have.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn code_file(_len: usize) -> io::Result<std::fs::File> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no memfd_create on this OS",
        ))
    }
}
