//! One request stream, two personalities: the answers of the SEV-TIO check (`Rmp::check_dma`) and
//! the TDX Connect check (`Tdx::check_request`) for the same trusted and untrusted DMA, set up so
//! that both describe the same guest (one private page, one shared page). Where they differ is
//! the point of docs/tdx-vs-sev-tio.md.

use rmp_model::dma_check::{DmaRefusal, DmaRequest, TdiBinding};
use rmp_model::ops::{GuestCtx, RmpState};
use rmp_model::tdisp::TdiState;
use rmp_model::tdx::{PageType, Tdx, TdxRefusal};
use rmp_model::{PageSize, Rmp};

const PRIV_SPA: u64 = 0x10_0000;
const PRIV_GPA: u64 = 0x5000;
const SHARED_SPA: u64 = 0x20_0000;
/// SEV-TIO: vTOM; TDX: the shared bit (GPAW 52).
const VTOM: u64 = 1 << 40;
const SHARED_BIT: u64 = 1 << 51;

fn req(t: bool, state: TdiState, iova: u64, spa: u64, write: bool) -> DmaRequest {
    let tdi = t.then_some(TdiBinding { asid: 1, vtom: VTOM, state });
    DmaRequest { requester: 0x20, t, tdi, iova, spa, write, mapping_size_log2: 12 }
}

#[test]
fn same_requests_both_personalities() {
    let mut rmp = Rmp::new(1024);
    rmp.rmpupdate(PRIV_SPA, &RmpState::private(PRIV_GPA, 1, PageSize::Size4K));
    rmp.pvalidate(GuestCtx { asid: 1, vmpl: 0 }, PRIV_SPA, PRIV_GPA, PageSize::Size4K, true);
    let mut tdx = Tdx::new(51);
    tdx.page_add(1, PRIV_SPA, PageType::Regular);
    tdx.trusted_map(1, PRIV_GPA, PRIV_SPA);
    tdx.bind(0x20, 1);

    use TdiState::{ConfigLocked, Run};
    type Sev = Result<(), DmaRefusal>;
    type Tdxr = Result<u64, TdxRefusal>;
    let rows: [(&str, DmaRequest, Sev, Tdxr); 9] = [
        (
            "T=0 write to the private page",
            req(false, Run, 0x1000, PRIV_SPA, true),
            Err(DmaRefusal::AssignedPage),
            Err(TdxRefusal::PrivatePage),
        ),
        ("T=0 read of the private page", req(false, Run, 0x1000, PRIV_SPA, false), Ok(()), Err(TdxRefusal::PrivatePage)),
        ("T=0 write to a shared page", req(false, Run, 0x1000, SHARED_SPA, true), Ok(()), Ok(SHARED_SPA)),
        ("T=1 private, host mapping right", req(true, Run, PRIV_GPA, PRIV_SPA, true), Ok(()), Ok(PRIV_SPA)),
        // The host scrambled its I/O page table: SEV-TIO faults; TDX never used it.
        ("T=1 private, host mapping wrong", req(true, Run, PRIV_GPA, SHARED_SPA, true), Err(DmaRefusal::AsidMismatch), Ok(PRIV_SPA)),
        (
            "T=1 private, TDI not in RUN",
            req(true, ConfigLocked, PRIV_GPA, PRIV_SPA, true),
            Err(DmaRefusal::TdiNotRun),
            Err(TdxRefusal::NotRun),
        ),
        (
            "T=1 private GPA never mapped",
            req(true, Run, 0x9000, 0x9000, true),
            Err(DmaRefusal::AsidMismatch),
            Err(TdxRefusal::NoTrustedMapping),
        ),
        ("T=1 shared to a shared page", req(true, Run, VTOM | SHARED_BIT | 0x7000, SHARED_SPA, true), Ok(()), Ok(SHARED_SPA)),
        (
            "T=1 shared to the private page",
            req(true, Run, VTOM | SHARED_BIT | 0x7000, PRIV_SPA, true),
            Err(DmaRefusal::SharedToPrivate),
            Err(TdxRefusal::SharedToPrivate),
        ),
    ];
    for (name, r, sev, tdx_want) in rows {
        assert_eq!(rmp.check_dma(&r).map_err(|f| f.reason), sev, "SEV-TIO: {name}");
        assert_eq!(tdx.check_request(&r), tdx_want, "TDX Connect: {name}");
    }
}
