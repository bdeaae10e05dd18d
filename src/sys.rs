//! Operating-system specifics, in one module: the thread's `errno`.

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe extern "C" {
    #[link_name = "__errno_location"]
    fn errno_location() -> *mut i32;
}

#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
unsafe extern "C" {
    #[link_name = "__error"]
    fn errno_location() -> *mut i32;
}

#[cfg(windows)]
unsafe extern "C" {
    #[link_name = "_errno"]
    fn errno_location() -> *mut i32;
}

/// The calling thread's `errno`.
#[inline(always)]
pub(crate) fn errno() -> i32 {
    // SAFETY: the C library returns a valid pointer to the calling thread's errno.
    unsafe { *errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline(always)]
pub(crate) fn set_errno(value: i32) {
    // SAFETY: as in `errno`; the location is thread-local and writable.
    unsafe { *errno_location() = value }
}
