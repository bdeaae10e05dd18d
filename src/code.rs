//! The one place where a code address becomes something callable.

use std::ffi::c_void;
use std::ptr::NonNull;

/// A native function pointer, as libffi's `ffi_call` takes it.
pub(crate) type RawFn = unsafe extern "C" fn();

/// Turns a non-null code address into a callable function pointer.
///
/// This is the only conversion of a code pointer into a callable in tierbridge;
/// every path that calls native code goes through it.
///
/// # Safety
/// `code` must be the address of executable code that follows the convention
/// and signature the resulting pointer will be called with.
pub(crate) unsafe fn callable(code: NonNull<c_void>) -> RawFn {
    // SAFETY: function pointers and data pointers have the same size and
    // representation on every platform tierbridge supports; the caller vouches
    // that `code` is executable code of the right shape.
    unsafe { std::mem::transmute::<*mut c_void, RawFn>(code.as_ptr()) }
}
