//! The allocation limit: a global allocator (installed by the fuzz drivers, never by the
//! program) that fails any single allocation above the current limit, which aborts the process
//! with "memory allocation of N bytes failed" — a finding, with the input that caused it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The most one input may allocate at once: 64 MiB plus 1024 bytes per input byte (decoded
/// audio and converted tensors are larger than their files, but proportionally so).
pub fn max_allocation(input_len: usize) -> usize {
    (64usize << 20).saturating_add(input_len.saturating_mul(1024))
}

pub struct Limited;

fn allowed(size: usize) -> bool {
    size <= LIMIT.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Sets the limit for an input of `len` bytes until dropped.
pub struct Guard;

pub fn limit_for(len: usize) -> Guard {
    LIMIT.store(max_allocation(len), Ordering::Relaxed);
    Guard
}

impl Drop for Guard {
    fn drop(&mut self) {
        LIMIT.store(usize::MAX, Ordering::Relaxed);
    }
}
