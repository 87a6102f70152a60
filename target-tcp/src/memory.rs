//! An in-memory IP link: one end of it is a [`phy::Device`] whose received packets are
//! whatever is pushed into [`MemoryLink::rx`] and whose sent packets land in
//! [`MemoryLink::tx`]. For driving a [`crate::Stack`] without a network: the stack's tests
//! join two ends through a fault model, the fuzz target feeds one arbitrary packets.
//! Checksums are computed and verified in software (smoltcp's default), as on the AF_XDP
//! path.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// One end of an in-memory IP link.
pub struct MemoryLink {
    /// Packets to be received, oldest first.
    pub rx: VecDeque<Vec<u8>>,
    /// Packets sent, oldest first.
    pub tx: VecDeque<Vec<u8>>,
    pub mtu: usize,
}

impl MemoryLink {
    pub fn new(mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        }
    }
}

pub struct Rx(Vec<u8>);

pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for MemoryLink {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
