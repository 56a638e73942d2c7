//! The QEMU plugin C API: the entry points QEMU looks for, and the calls this plugin makes. All
//! of the plugin's `unsafe` is here.
//!
//! Why not the `qemu-plugin` crate's high-level API: its newest release (10.1.0-v2) exports plugin
//! API version 5, and QEMU 11.1 (what scripts/setup provides) refuses plugins older than version
//! 7 ("plugin requires API version 5, but this QEMU supports only a minimum version of 7",
//! measured). This module exports version 7. It takes the declarations of the calls whose C
//! signatures did not change (tb_n_insns, tb_get_insn, insn_vaddr, register_vcpu_mem_cb,
//! mem_is_store, get_hwaddr, hwaddr_is_io, hwaddr_phys_addr) from the same project's
//! qemu-plugin-sys, and declares the one that did (register_vcpu_tb_trans_cb) below;
//! scripts/run-vm --plugin checks the whole end to end.

// The plugin's one home of `unsafe`: QEMU's C API (each block with a SAFETY comment).
#![allow(unsafe_code)]

use qemu_plugin_sys::{
    qemu_info_t, qemu_plugin_cb_flags, qemu_plugin_get_hwaddr, qemu_plugin_hwaddr_is_io, qemu_plugin_hwaddr_phys_addr, qemu_plugin_id_t,
    qemu_plugin_insn_vaddr, qemu_plugin_mem_is_store, qemu_plugin_mem_rw, qemu_plugin_meminfo_t, qemu_plugin_register_vcpu_mem_cb,
    qemu_plugin_tb, qemu_plugin_tb_get_insn, qemu_plugin_tb_n_insns,
};

/// API 7 passes user data, not the plugin id, to translation callbacks (read off QEMU 11.1's
/// qemu_plugin_tb_trans_cb: it calls `cb(tb, udata)`, and the register call takes a third
/// argument), so this one is declared here rather than taken from the version-5 bindings.
type TbTransCb = Option<unsafe extern "C" fn(tb: *mut qemu_plugin_tb, userdata: *mut c_void)>;

unsafe extern "C" {
    fn qemu_plugin_register_vcpu_tb_trans_cb(id: qemu_plugin_id_t, cb: TbTransCb, userdata: *mut c_void);
}
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

/// The plugin API version this plugin is written against (QEMU 11.1 accepts 7..=its own).
#[no_mangle]
pub static qemu_plugin_version: c_int = 7;

#[no_mangle]
pub extern "C" fn qemu_plugin_install(id: qemu_plugin_id_t, _info: *const qemu_info_t, argc: c_int, argv: *const *const c_char) -> c_int {
    let args: Vec<String> = (0..argc.max(0) as usize)
        .map(|i| {
            // SAFETY: QEMU passes argc valid NUL-terminated strings in argv for the duration of
            // this call; they are copied out here.
            unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy().into_owned()
        })
        .collect();
    if let Err(e) = crate::install(&args) {
        eprintln!("tiommu-rmp-plugin: {e}");
        return -1;
    }
    // SAFETY: registering a callback with the id QEMU gave this plugin; the callback is a plain
    // function that lives as long as the library and takes the API-7 arguments.
    unsafe { qemu_plugin_register_vcpu_tb_trans_cb(id, Some(tb_trans), std::ptr::null_mut()) };
    0
}

/// Every translated block: a store callback on each instruction, its PC as the user data.
unsafe extern "C" fn tb_trans(tb: *mut qemu_plugin_tb, _userdata: *mut c_void) {
    // SAFETY: `tb` is valid during this callback, and so are the instructions taken from it.
    unsafe {
        for i in 0..qemu_plugin_tb_n_insns(tb) {
            let insn = qemu_plugin_tb_get_insn(tb, i);
            let pc = qemu_plugin_insn_vaddr(insn);
            qemu_plugin_register_vcpu_mem_cb(
                insn,
                Some(on_mem),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_W,
                pc as *mut c_void,
            );
        }
    }
}

unsafe extern "C" fn on_mem(vcpu: c_uint, info: qemu_plugin_meminfo_t, vaddr: u64, pc: *mut c_void) {
    // SAFETY: `info` describes the access this callback reports; the hwaddr handle it yields is
    // valid during the callback and checked for NULL (user-mode emulation has none).
    let pa = unsafe {
        if !qemu_plugin_mem_is_store(info) {
            return;
        }
        let hw = qemu_plugin_get_hwaddr(info, vaddr);
        if hw.is_null() || qemu_plugin_hwaddr_is_io(hw) {
            return;
        }
        qemu_plugin_hwaddr_phys_addr(hw)
    };
    crate::on_store(vcpu, pc as u64, vaddr, pa);
}
