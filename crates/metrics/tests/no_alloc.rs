//! Proves the hot-path claim: updating pre-resolved handles (and cloning them into a
//! session) performs no heap allocation.

// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to the
// system allocator. Confined to this test binary, never linked into postern.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use postern_metrics::{HandshakeFailure, Metrics, SessionOutcome};

struct Counting;

thread_local! {
    // Per thread, so the test harness's other threads cannot disturb the count.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the thread-local is const-initialised
// and has no destructor, so touching it cannot allocate or recurse.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn hot_path_updates_do_not_allocate() {
    let metrics = Metrics::new("test");
    let listener = metrics.listener("imaps");
    let server = metrics.server("imap", "127.0.0.1:143");
    let tls = metrics.tls();

    let n = allocations_during(|| {
        for i in 0..1000u64 {
            let session = listener.clone();
            let backend = server.clone();
            session.accepted.inc();
            session.active.inc();
            session.handshake_duration.observe(0.001 * i as f64);
            session
                .handshake_failure(HandshakeFailure::ALL[i as usize % HandshakeFailure::ALL.len()]);
            backend.connect_duration.observe(0.0002);
            backend.active.inc();
            session.bytes_client_to_backend.inc_by(i);
            session.bytes_backend_to_client.inc_by(2 * i);
            session.starttls_discarded_bytes.inc_by(1);
            session.session_duration.observe(i as f64);
            session.session_outcome(SessionOutcome::ALL[i as usize % SessionOutcome::ALL.len()]);
            backend.active.dec();
            backend.connect_failures.inc();
            backend.up.set((i % 2) as i64);
            session.active.dec();
            session.rejected_limit.inc();
            session.rejected_shutdown.inc();
            session.accept_errors.inc();
            tls.reload_ok();
            tls.reload_error();
        }
    });
    assert_eq!(n, 0, "hot-path metric updates allocated {n} times");
    // The counting allocator does see allocations, so the zero above is meaningful.
    assert!(allocations_during(|| drop(metrics.encode())) > 0);
}
