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

    /// Mappings are populated when made (one batch of page-table work per
    /// slab, not one page fault per page as code is first written and run).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const POPULATE: libc::c_int = libc::MAP_POPULATE;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const POPULATE: libc::c_int = 0;

    /// An owned memory mapping, unmapped on drop.
    pub(crate) struct Mapping {
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    }

    impl Mapping {
        /// Maps `len` bytes, at `hint` if that range is free (the kernel
        /// chooses elsewhere otherwise; 0 means no preference): a private
        /// anonymous read-write mapping when `file` is `None`, else a shared
        /// read+execute view of `file`.
        pub(crate) fn new(
            hint: usize,
            len: usize,
            file: Option<&std::fs::File>,
        ) -> io::Result<Mapping> {
            use std::os::fd::AsRawFd;
            let (prot, flags, fd) = match file {
                None => (
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                ),
                Some(f) => (
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                ),
            };
            let flags = flags | POPULATE;
            // SAFETY: no MAP_FIXED, so the hint never replaces an existing
            // mapping; the result is checked before use.
            let p = unsafe { libc::mmap(hint as *mut libc::c_void, len, prot, flags, fd, 0) };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let ptr = std::ptr::NonNull::new(p.cast::<u8>())
                .ok_or_else(|| io::Error::other("mmap returned address 0"))?;
            Ok(Mapping { ptr, len })
        }

        /// The first byte.
        pub(crate) fn as_ptr(&self) -> *mut u8 {
            self.ptr.as_ptr()
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: `ptr..ptr+len` is this mapping, which nothing uses any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
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

/// The calling thread's stack as `(lowest address, highest address)`, when
/// the operating system tells (Linux: `pthread_getattr_np`, which for the
/// main thread reads its stack rlimit; macOS: `pthread_get_stackaddr_np`).
/// The range excludes the guard page of threads made by the C library.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn thread_stack_bounds() -> Option<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is written by pthread_getattr_np before it is read, and
    // destroyed once (only when it was initialised).
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if r != 0 || addr.is_null() || size == 0 {
            return None;
        }
        let low = addr as usize;
        Some((low, low.checked_add(size)?))
    }
}

/// See the Linux version.
#[cfg(any(target_os = "macos", target_os = "ios"))]
pub(crate) fn thread_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: both functions only read the calling thread's descriptor.
    let (high, size) = unsafe {
        let me = libc::pthread_self();
        (
            libc::pthread_get_stackaddr_np(me) as usize,
            libc::pthread_get_stacksize_np(me),
        )
    };
    (high != 0 && size != 0).then(|| (high - size, high))
}

/// See the Linux version: unknown here, so stack checks pass.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
)))]
pub(crate) fn thread_stack_bounds() -> Option<(usize, usize)> {
    None
}
