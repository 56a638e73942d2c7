//! The TDISP responder against untrusted bytes: every input gets a well-formed response, and the
//! state only moves along the transitions of PCIe TDISP (libspdm pci_tdisp.h codes).

use proptest::prelude::*;
use rmp_model::tdisp::{self, err, parse_response, req, Response, TdiState, TdispResponder};

const FID: u32 = 0x20;

fn responder() -> TdispResponder {
    TdispResponder::new(FID, vec![tdisp::MmioRange { first_page: 0xfe000, pages: 2, attributes: 0, range_id: 0 }])
}

fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(tdisp::request(req::GET_TDISP_VERSION, FID, &[])),
        Just(tdisp::request(req::GET_TDISP_CAPABILITIES, FID, &[0; 4])),
        any::<u16>().prop_map(|f| tdisp::lock_interface(FID, f, 0, 0)),
        (0..64u16, 0..64u16).prop_map(|(o, l)| tdisp::get_report(FID, o, l)),
        Just(tdisp::request(req::GET_DEVICE_INTERFACE_STATE, FID, &[])),
        any::<[u8; 32]>().prop_map(|n| tdisp::start_interface(FID, &n)),
        Just(tdisp::request(req::STOP_INTERFACE, FID, &[])),
        (0x80..=0xffu8).prop_map(|c| tdisp::request(c, FID, &[0; 40])),
    ]
}

/// A valid request, then some of its bytes flipped or cut.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (valid_request(), prop::collection::vec((any::<usize>(), any::<u8>()), 0..4), any::<Option<usize>>()).prop_map(|(mut m, flips, cut)| {
        for (i, x) in flips {
            let n = m.len();
            m[i % n] ^= x;
        }
        if let Some(c) = cut {
            m.truncate(c % (m.len() + 1));
        }
        m
    })
}

fn allowed(from: TdiState, to: TdiState, code: u8, ok: bool) -> bool {
    use TdiState::*;
    from == to
        || (code == req::LOCK_INTERFACE && ok && from == ConfigUnlocked && to == ConfigLocked)
        || (code == req::START_INTERFACE && ok && from == ConfigLocked && to == Run)
        || (code == req::START_INTERFACE && !ok && from == ConfigLocked && to == Error)
        || (code == req::STOP_INTERFACE && ok && to == ConfigUnlocked)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_get_a_response(msgs in prop::collection::vec(prop_oneof![mutated(), prop::collection::vec(any::<u8>(), 0..64)], 1..24)) {
        let mut r = responder();
        for m in msgs {
            let before = r.state();
            let rsp = r.handle_request(&m);
            let parsed = parse_response(&rsp);
            prop_assert!(parsed.is_some(), "unparseable response {:02x?} to {:02x?}", rsp, m);
            prop_assert_eq!(&rsp[4..8], &FID.to_le_bytes(), "response names the interface");
            let ok = !matches!(parsed, Some(Response::Error { .. }));
            if ok {
                prop_assert_eq!(rsp[1], m[1] - 0x80, "response code = request code - 0x80");
            }
            let code = m.get(1).copied().unwrap_or(0);
            prop_assert!(allowed(before, r.state(), code, ok), "{:?} -> {:?} on {:#x} ok={}", before, r.state(), code, ok);
        }
    }
}

#[test]
fn config_change_while_locked_or_running_is_error() {
    for run in [false, true] {
        let mut r = responder();
        let nonce = match parse_response(&r.handle_request(&tdisp::lock_interface(FID, 0, 0, 0))) {
            Some(Response::Locked { nonce }) => nonce,
            other => panic!("{other:?}"),
        };
        if run {
            r.handle_request(&tdisp::start_interface(FID, &nonce));
            assert_eq!(r.state(), TdiState::Run);
        }
        r.config_changed();
        assert_eq!(r.state(), TdiState::Error);
        // In ERROR only STOP leads out; LOCK and START are refused, the report is not given.
        for m in [tdisp::lock_interface(FID, 0, 0, 0), tdisp::start_interface(FID, &nonce), tdisp::get_report(FID, 0, 16)] {
            match parse_response(&r.handle_request(&m)) {
                Some(Response::Error { code, .. }) => assert_eq!(code, err::INVALID_INTERFACE_STATE),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(parse_response(&r.handle_request(&tdisp::request(req::STOP_INTERFACE, FID, &[]))), Some(Response::Stopped));
        assert_eq!(r.state(), TdiState::ConfigUnlocked);
    }
}

#[test]
fn report_interface_info_and_ranges() {
    let mut r = responder();
    r.handle_request(&tdisp::lock_interface(FID, tdisp::lock_flags::NO_FW_UPDATE, 0, 0x1000_0000));
    let Some(Response::Report { portion, remainder: 0 }) = parse_response(&r.handle_request(&tdisp::get_report(FID, 0, 0x400))) else {
        panic!()
    };
    let info = u16::from_le_bytes([portion[0], portion[1]]);
    assert_eq!(info, tdisp::interface_info::NO_UPDATE_AFTER_LOCK | tdisp::interface_info::DMA_WITHOUT_PASID);
    assert_eq!(u32::from_le_bytes(portion[12..16].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(portion[16..24].try_into().unwrap()), 0xfe000 + 0x10000, "first page + MMIO reporting offset");
    assert_eq!(u32::from_le_bytes(portion[24..28].try_into().unwrap()), 2);
    // Fetched in portions, the report is the same bytes.
    let mut whole = Vec::new();
    loop {
        let Some(Response::Report { portion, remainder }) =
            parse_response(&r.handle_request(&tdisp::get_report(FID, whole.len() as u16, 7)))
        else {
            panic!()
        };
        whole.extend_from_slice(&portion);
        if remainder == 0 {
            break;
        }
    }
    assert_eq!(whole, portion);
}
