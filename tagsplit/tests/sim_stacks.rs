//! Stacks in the simulator, end to end: `part4`'s leaking site allocates through a real
//! call chain, and the unwinder walks the stack the machine lays out from `.pdata`/`.xdata`
//! read over the sim backend: `nt!ExAllocatePoolWithTag` <- the driver's helper <- its
//! worker <- its thread routine <- nt's thread start, to a clear end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use tagsplit::VirtAddr;
use tagsplit::stack::{Registers, Stack, StopReason, Unwinder, Unwound};
use tagsplit::target::DebugTarget;
use tagsplit::target::sim::SimTarget;
use tagsplit_protocol::nt::unwind::Reg;
use tagsplit_target_sim::machine::{AllocPoint, SiteInfo};

/// The leaking site of `part4` (myfault's second `Leak` site) and its index.
fn leaking_site(t: &SimTarget) -> (usize, SiteInfo) {
    let sites = t.machine().sites();
    let (i, s) = sites
        .iter()
        .enumerate()
        .find(|(_, s)| s.leaks && s.module == "myfault.sys")
        .unwrap();
    (i, s.clone())
}

/// Whether the bytes just before `ret` end with a `call` instruction (of any length).
fn call_ends_at(t: &mut SimTarget, ret: VirtAddr) -> Option<String> {
    let mut code = [0u8; 16];
    t.read_memory(VirtAddr(ret.get() - 16), &mut code).unwrap();
    for len in 2..=7usize {
        let start = 16 - len;
        let mut d = Decoder::with_ip(
            64,
            &code[start..],
            ret.get() - len as u64,
            DecoderOptions::NONE,
        );
        let ins = d.decode();
        if !ins.is_invalid() && ins.len() == len && ins.mnemonic() == Mnemonic::Call {
            return Some(ins.to_string());
        }
    }
    None
}

fn walk(t: &mut SimTarget, point: AllocPoint) -> Stack {
    let (i, site) = leaking_site(t);
    let ctx = t
        .machine_mut()
        .context_at_allocation(i, site.size, point)
        .unwrap();
    assert_eq!(ctx.rcx, u64::from(site.pool_type.0));
    assert_eq!(ctx.rdx, site.size);
    assert_eq!(ctx.r8, u64::from(site.tag.to_u32()));
    let regs = Registers::from(&ctx);
    let mut u = Unwinder::for_target(t).unwrap();
    u.walk(t, &regs).unwrap()
}

fn check(t: &mut SimTarget, stack: &Stack) {
    let (_, site) = leaking_site(t);
    println!("{stack}({})", stack.stop);
    let where_: Vec<(String, Option<Unwound>)> = stack
        .frames
        .iter()
        .map(|f| (f.call_site.as_ref().unwrap().module.clone(), f.unwound))
        .collect();
    let modules: Vec<&str> = where_.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        modules,
        ["nt", "myfault", "myfault", "myfault", "nt", "nt"],
        "ExAllocatePoolWithTag <- helper <- worker <- thread routine <- \
         PspSystemThreadStartup <- KiStartSystemThread"
    );
    assert_eq!(stack.stop, StopReason::EndOfStack);
    assert!(stack.complete());
    // Frame 0 is in nt!ExAllocatePoolWithTag (nt's first import's export).
    let nt_alloc = {
        let nt = &t.machine().modules()[0];
        let _ = nt;
        // The IAT slot the site's call reads holds the export's address.
        let call = site.call.unwrap();
        let mut disp = [0u8; 4];
        t.read_memory(VirtAddr(call.get() + 2), &mut disp).unwrap();
        let slot = (call.get() + 6).wrapping_add(i32::from_le_bytes(disp) as i64 as u64);
        let mut v = [0u8; 8];
        t.read_memory(VirtAddr(slot), &mut v).unwrap();
        u64::from_le_bytes(v)
    };
    let f0 = &stack.frames[0];
    assert!(
        f0.rip.get() >= nt_alloc && f0.rip.get() < nt_alloc + 0x40,
        "frame 0 at {} is in ExAllocatePoolWithTag at {nt_alloc:#x}",
        f0.rip
    );
    // Frame 1 is the helper, right after the site's `call [ExAllocatePoolWithTag]`.
    assert_eq!(
        stack.frames[1].rip,
        site.call.unwrap().saturating_add(6),
        "the helper returns right after its call"
    );
    // Every return address points just after a real `call`.
    for f in &stack.frames[..stack.frames.len() - 1] {
        let ret = f.ret_addr.unwrap();
        assert!(
            call_ends_at(t, ret).is_some(),
            "no call before the return address {ret} of frame {}",
            f.number
        );
        assert!(
            matches!(f.unwound, Some(Unwound::Prolog { .. })),
            "frame {} unwound by its unwind codes: {:?}",
            f.number,
            f.unwound
        );
    }
    // The last frame returns to 0: the bottom of the thread's stack.
    assert_eq!(stack.frames.last().unwrap().ret_addr, Some(VirtAddr(0)));
    // Non-volatile registers come back as the thread started (all zero), through every
    // push the frames made, and rsp to the top of the stack.
    let (_, top) = t.machine().site_stack(leaking_site(t).0).unwrap();
    let last = &stack.frames.last().unwrap().registers;
    // rbx rbp rsi rdi r12-r15
    for r in [3, 5, 6, 7, 12, 13, 14, 15].map(Reg::from_nibble) {
        assert_eq!(last.get(r), 0, "{r} at the bottom frame");
    }
    assert!(last.rsp() < top.get() && last.rsp() >= top.get() - 0x100);
    // The frames' stack pointers grow.
    for w in stack.frames.windows(2) {
        assert!(w[0].child_sp < w[1].child_sp);
    }
}

#[test]
fn the_leaking_site_unwinds_from_the_allocator_to_the_thread_start() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let stack = walk(&mut t, AllocPoint::Entry);
    check(&mut t, &stack);
    let entry = stack.frames[0].rip;
    // At the PoolHitTag break, inside the allocator past its prolog: the same frames.
    let inside = walk(&mut t, AllocPoint::HitTagBreak);
    check(&mut t, &inside);
    assert!(inside.frames[0].rip > entry);
    for (a, b) in stack.frames.iter().zip(&inside.frames).skip(1) {
        assert_eq!((a.rip, a.child_sp), (b.rip, b.child_sp));
    }
    // The allocator's frame saved the helper's non-volatiles; unwinding restores them.
    assert_eq!(
        inside.frames[1].registers.get(Reg::Rbx),
        stack.frames[1].registers.get(Reg::Rbx)
    );
}

#[test]
fn the_last_allocation_of_a_run_has_its_stack() {
    let mut t = SimTarget::builtin("part4").unwrap();
    // Boot ran 4 ticks; the leaking site fires when tick % 4 == 0 and runs last.
    t.machine_mut().run(4);
    let (i, site) = leaking_site(&t);
    let last = t.machine().last_allocation().unwrap();
    assert_eq!((last.site, last.size), (i, site.size));
    let ctx = t
        .machine_mut()
        .context_at_last_allocation(AllocPoint::Entry)
        .unwrap()
        .unwrap();
    let regs = Registers::from(&ctx);
    let mut u = Unwinder::for_target(&mut t).unwrap();
    let stack = u.walk(&mut t, &regs).unwrap();
    check(&mut t, &stack);
    // Deterministic: the same state twice.
    let again = t
        .machine_mut()
        .context_at_allocation(i, site.size, AllocPoint::Entry)
        .unwrap();
    assert_eq!(again, ctx);
}

#[test]
fn every_allocating_site_of_every_builtin_unwinds_to_the_bottom() {
    for name in ["part4", "many-sites", "scale:10:20"] {
        let mut t = SimTarget::builtin(name).unwrap();
        let sites = t.machine().sites();
        let mut walked = 0;
        for (i, s) in sites.iter().enumerate() {
            if t.machine().site_stack(i).is_none() {
                continue;
            }
            let module = Unwinder::for_target(&mut t)
                .unwrap()
                .call_site(s.instr)
                .unwrap()
                .module;
            // An allocation, and a free by the same worker through the module's free
            // helper (each written to the thread's stack in turn, then walked).
            let runs = [AllocPoint::Entry, AllocPoint::HitTagBreak]
                .into_iter()
                .flat_map(|point| [(point, false), (point, true)]);
            for (point, free) in runs {
                let m = t.machine_mut();
                let ctx = if free {
                    let block = VirtAddr(0xfffffa80_01000040);
                    m.context_at_free(i, block, s.tag, point).unwrap()
                } else {
                    m.context_at_allocation(i, s.size, point).unwrap()
                };
                let mut u = Unwinder::for_target(&mut t).unwrap();
                let stack = u.walk(&mut t, &Registers::from(&ctx)).unwrap();
                let whole = stack.complete() && stack.frames.len() == 6;
                assert!(whole, "{name} site {i}\n{stack}({})", stack.stop);
                let helper = &stack.frames[1];
                assert_eq!(helper.call_site.as_ref().unwrap().module, module);
                if !free {
                    assert_eq!(helper.rip, s.call.unwrap().saturating_add(6));
                }
            }
            walked += 1;
        }
        assert!(walked > 0, "{name}");
    }
}

#[test]
fn the_last_free_of_a_run_unwinds_from_ex_free_pool_with_tag() {
    let mut t = SimTarget::builtin("part4").unwrap();
    t.machine_mut().run(20);
    let last = t.machine().last_free().unwrap();
    let site = t.machine().sites()[last.site].clone();
    assert!(site.allocates && !site.leaks);
    for point in [AllocPoint::Entry, AllocPoint::HitTagBreak] {
        let ctx = t
            .machine_mut()
            .context_at_last_free(point)
            .unwrap()
            .unwrap();
        if point == AllocPoint::Entry {
            assert_eq!(ctx.rcx, last.addr.get());
        } else {
            assert_eq!(
                (ctx.rbx, ctx.rax),
                (last.addr.get(), u64::from(last.tag.to_u32()))
            );
        }
        let mut u = Unwinder::for_target(&mut t).unwrap();
        let stack = u.walk(&mut t, &Registers::from(&ctx)).unwrap();
        println!("{stack}({})", stack.stop);
        let m = u.call_site(site.instr).unwrap().module;
        let modules: Vec<String> = stack
            .frames
            .iter()
            .map(|f| f.call_site.as_ref().unwrap().module.clone())
            .collect();
        assert_eq!(modules, ["nt", &m, &m, &m, "nt", "nt"]);
        assert_eq!(stack.stop, StopReason::EndOfStack);
        for f in &stack.frames[..stack.frames.len() - 1] {
            assert!(call_ends_at(&mut t, f.ret_addr.unwrap()).is_some());
        }
    }
}
