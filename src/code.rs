//! The one place where a code address becomes something callable.

use std::ffi::c_void;
use std::ptr::NonNull;

/// A native function pointer, as libffi's `ffi_call` takes it.
pub(crate) type RawFn = unsafe extern "C" fn();

/// Turns a non-null code address into a function pointer of type `F`.
///
/// This is the only conversion of a code pointer into a callable in
/// tierbridge; every path that calls native code goes through it.
///
/// # Safety
/// `F` must be a function pointer type (`extern "C" fn(..)`,
/// `extern "win64" fn(..)`, …) and `code` must be the address of executable
/// code that follows exactly that type's convention and signature.
pub(crate) unsafe fn callable_as<F: Copy>(code: NonNull<c_void>) -> F {
    assert_eq!(
        size_of::<F>(),
        size_of::<*mut c_void>(),
        "callable_as: F is not a function pointer type"
    );
    // SAFETY: F is pointer-sized (checked above) and, by the caller's promise, a
    // function pointer type matching the code at `code`; function and data
    // pointers share one representation on every platform tierbridge supports.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&code.as_ptr()) }
}

/// [`callable_as`] for the untyped pointer libffi takes.
///
/// # Safety
/// As [`callable_as`]: `code` is executable code of the signature the pointer
/// will be called with.
pub(crate) unsafe fn callable(code: NonNull<c_void>) -> RawFn {
    // SAFETY: forwarded contract.
    unsafe { callable_as::<RawFn>(code) }
}
