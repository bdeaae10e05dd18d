//! Single-threaded hosts: an `Rc<RefCell<..>>` interpreter bound with
//! `Dispatcher::from_local_host` runs for calls on its own thread, and a C
//! caller on a second thread (a pthread made by a C fixture compiled here)
//! is refused with a typed status, never runs it — on every backend.

mod support;

use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{
    Dispatcher, EntryCall, EntryError, FailurePolicy, HostError, STATUS_OK, STATUS_WRONG_THREAD,
    pending_entry_status, take_entry_error,
};

/// Calls `f(arg)` on a new pthread, then, on that thread, asks tierbridge
/// whether a callback failed; hands both back.
const CALLER: &str = r#"
#include <pthread.h>
#include <stdint.h>
typedef int64_t (*fn_t)(int64_t);
typedef uint32_t (*status_t)(void);
struct job { fn_t f; int64_t arg; int64_t result; status_t status; uint32_t st; };
static void *run(void *p) {
    struct job *j = p;
    j->result = j->f(j->arg);
    j->st = j->status();
    return 0;
}
int64_t call_on_new_thread(fn_t f, int64_t arg, status_t status, uint32_t *st) {
    pthread_t t;
    struct job j = { f, arg, 0, status, 0 };
    if (pthread_create(&t, 0, run, &j) != 0) return -1;
    pthread_join(t, 0);
    *st = j.st;
    return j.result;
}
int64_t call_here(fn_t f, int64_t arg, status_t status, uint32_t *st) {
    int64_t r = f(arg);
    *st = status();
    return r;
}
"#;

type Caller = unsafe extern "C" fn(*const c_void, i64, extern "C" fn() -> u32, *mut u32) -> i64;

/// Sets a flag when dropped (the host's state is `Rc`, so the flag tells
/// from another thread whether it was dropped).
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The interpreter's state: not `Send`, not `Sync`.
struct Vm {
    calls: u64,
    log: Vec<i64>,
    _dropped: Dropped,
}

#[test]
fn a_single_threaded_host_runs_on_its_thread_and_refuses_other_threads() {
    let lib = support::Lib::open(&support::compile_so("local_host_caller", CALLER));
    // SAFETY: the fixture's functions have these signatures.
    let (on_thread, here): (Caller, Caller) = unsafe {
        (
            std::mem::transmute::<*const c_void, Caller>(lib.addr("call_on_new_thread")),
            std::mem::transmute::<*const c_void, Caller>(lib.addr("call_here")),
        )
    };
    for (name, bridge) in support::all_bridges() {
        let dropped = Arc::new(AtomicBool::new(false));
        let vm = Rc::new(RefCell::new(Vm {
            calls: 0,
            log: Vec::new(),
            _dropped: Dropped(dropped.clone()),
        }));
        let host_vm = vm.clone();
        let host = move |c: EntryCall<'_>| -> Result<(), HostError> {
            let mut vm = host_vm.borrow_mut();
            vm.calls += 1;
            vm.log.push(c.args[0] as i64);
            c.ret[0] = (c.args[0] as i64 * 3) as u64;
            Ok(())
        };
        let d = Dispatcher::from_local_host(host, FailurePolicy::Report);
        let e = bridge
            .entry_point(
                &Signature::parse("(i64)->i64").unwrap(),
                CallConv::SysV,
                &d,
                7,
            )
            .unwrap();
        let mut st = u32::MAX;
        // SAFETY: the entry point is an `int64_t(int64_t)`; `st` is writable.
        let r = unsafe { here(e.code_ptr(), 14, pending_entry_status, &mut st) };
        assert_eq!((r, st), (42, STATUS_OK), "{name}: on the host's thread");
        // SAFETY: as above.
        let r = unsafe { on_thread(e.code_ptr(), 5, pending_entry_status, &mut st) };
        assert_eq!(r, 0, "{name}: a refused call returns a zeroed result");
        assert_eq!(st, STATUS_WRONG_THREAD, "{name}: and the C thread sees why");
        assert_eq!(vm.borrow().calls, 1, "{name}: the host did not run");
        assert_eq!(vm.borrow().log, [14]);
        // A Rust thread calling the same pointer gets the typed error.
        let p = e.code_ptr() as usize;
        let err = std::thread::spawn(move || {
            // SAFETY: as above; the entry point outlives the thread (joined).
            let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(p) };
            assert_eq!(f(1), 0);
            take_entry_error()
        })
        .join()
        .unwrap();
        assert!(
            matches!(err, Some(EntryError::WrongThread { func: 7 })),
            "{name}: {err:?}"
        );
        assert_eq!(vm.borrow().calls, 1);
        // The host is dropped on its own thread with its last handle.
        drop((e, d));
        assert!(!dropped.load(Ordering::SeqCst), "vm still holds the state");
        drop(vm);
        assert!(dropped.load(Ordering::SeqCst), "{name}: dropped here");
    }
}

#[test]
fn a_single_threaded_host_whose_last_handle_goes_to_another_thread_is_leaked_not_dropped_there() {
    let dropped = Arc::new(AtomicBool::new(false));
    let state = Rc::new(Dropped(dropped.clone()));
    let host = move |_: EntryCall<'_>| -> Result<(), HostError> {
        let _ = &state;
        Ok(())
    };
    let d = Dispatcher::from_local_host(host, FailurePolicy::Report);
    std::thread::spawn(move || drop(d)).join().unwrap();
    // Dropping the Rc there could race with this thread; it was leaked.
    assert!(!dropped.load(Ordering::SeqCst));
}
