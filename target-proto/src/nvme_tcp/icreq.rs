//! Connection initialization (NVMe/TCP 1.0, section 3.3 "Connection Initialization"): the
//! host's ICReq and the controller's ICResp.
//!
//! The controller answers PFV 1.0 only; it grants each digest the host asks for when the
//! configuration allows it (Linux's host fails the connect when a digest it asked for is
//! not granted, which is the clear outcome for a target that forbids digests); it states
//! its own PDU data alignment (CPDA) and the most data it accepts in one H2CData PDU
//! (MAXH2CDATA). Following SPDK, a bad PFV or HPDA gets a C2HTermReq naming the field.

use target_wire::nvme_tcp::{IcRepr, MIN_MAXH2CDATA, PFV_1_0};

use super::Fatal;

/// Byte offset of PFV in an ICReq.
const PFV_OFFSET: u32 = 8;
/// Byte offset of HPDA in an ICReq.
const HPDA_OFFSET: u32 = 10;
/// The largest PDU data alignment the spec allows, in dwords, 0's based.
const MAX_PDA: u8 = 31;

/// What the controller offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerParams {
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
    /// CPDA: alignment of the data the controller sends, in dwords, 0's based.
    pub cpda: u8,
    /// MAXH2CDATA in bytes (at least 4096).
    pub max_h2c_data: u32,
}

impl Default for ControllerParams {
    fn default() -> Self {
        Self {
            allow_header_digest: true,
            allow_data_digest: true,
            cpda: 0,
            max_h2c_data: 128 * 1024,
        }
    }
}

/// What both sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Alignment, in bytes, of the data in PDUs the host sends (from HPDA).
    pub host_pda_bytes: usize,
    /// Alignment, in bytes, of the data in PDUs the controller sends (from CPDA).
    pub controller_pda_bytes: usize,
    pub max_h2c_data: u32,
    /// How many R2Ts the host accepts outstanding per command (MAXR2T + 1).
    pub host_max_r2t: u32,
}

/// Checks an ICReq and builds the ICResp, or says which field is wrong.
pub fn accept(icreq: &IcRepr, params: &ControllerParams) -> Result<(IcRepr, Negotiated), Fatal> {
    if icreq.pfv != PFV_1_0 {
        return Err(Fatal::invalid_field(PFV_OFFSET));
    }
    if icreq.pda > MAX_PDA {
        return Err(Fatal::invalid_field(HPDA_OFFSET));
    }
    let cpda = params.cpda.min(MAX_PDA);
    let max_h2c_data = params.max_h2c_data.max(MIN_MAXH2CDATA);
    let negotiated = Negotiated {
        header_digest: icreq.header_digest && params.allow_header_digest,
        data_digest: icreq.data_digest && params.allow_data_digest,
        host_pda_bytes: (usize::from(icreq.pda) + 1) * 4,
        controller_pda_bytes: (usize::from(cpda) + 1) * 4,
        max_h2c_data,
        host_max_r2t: icreq.max.saturating_add(1),
    };
    let resp = IcRepr {
        pfv: PFV_1_0,
        pda: cpda,
        header_digest: negotiated.header_digest,
        data_digest: negotiated.data_digest,
        max: max_h2c_data,
    };
    Ok((resp, negotiated))
}

#[cfg(test)]
mod tests {
    use target_wire::nvme_tcp::Fes;

    use super::*;

    fn linux_icreq() -> IcRepr {
        IcRepr {
            pfv: 0,
            pda: 0,
            header_digest: true,
            data_digest: false,
            max: 0,
        }
    }

    #[test]
    fn grants_what_the_host_asks_and_the_config_allows() {
        let (resp, n) = accept(&linux_icreq(), &ControllerParams::default()).unwrap();
        assert_eq!(
            resp,
            IcRepr {
                pfv: 0,
                pda: 0,
                header_digest: true,
                data_digest: false,
                max: 131072
            }
        );
        assert_eq!(
            (n.host_pda_bytes, n.controller_pda_bytes, n.host_max_r2t),
            (4, 4, 1)
        );

        let no_digests = ControllerParams {
            allow_header_digest: false,
            allow_data_digest: false,
            ..Default::default()
        };
        let all = IcRepr {
            data_digest: true,
            ..linux_icreq()
        };
        let (resp, n) = accept(&all, &no_digests).unwrap();
        assert!(!resp.header_digest && !resp.data_digest && !n.header_digest && !n.data_digest);
    }

    #[test]
    fn maxh2cdata_never_goes_below_the_spec_minimum_and_alignment_is_in_bytes() {
        let p = ControllerParams {
            max_h2c_data: 512,
            cpda: 7,
            ..Default::default()
        };
        let req = IcRepr {
            pda: 3,
            max: 15,
            ..linux_icreq()
        };
        let (resp, n) = accept(&req, &p).unwrap();
        assert_eq!((resp.max, resp.pda), (4096, 7));
        assert_eq!(
            (n.host_pda_bytes, n.controller_pda_bytes, n.host_max_r2t),
            (16, 32, 16)
        );
    }

    #[test]
    fn bad_pfv_and_hpda_name_their_field() {
        let fei = |r: Result<(IcRepr, Negotiated), Fatal>| match r {
            Err(Fatal::Terminate {
                fes: Fes::InvalidHeaderField,
                fei,
            }) => fei,
            other => panic!("{other:?}"),
        };
        let p = ControllerParams::default();
        assert_eq!(
            fei(accept(
                &IcRepr {
                    pfv: 1,
                    ..linux_icreq()
                },
                &p
            )),
            8
        );
        assert_eq!(
            fei(accept(
                &IcRepr {
                    pda: 32,
                    ..linux_icreq()
                },
                &p
            )),
            10
        );
    }
}
