//! Live estimates of the conditions plans are costed under, learnt from the client's own requests: per link
//! the RTT and the goodput each way, per tier a speed factor (measured / predicted compute) and the queue
//! wait at its agents.
//!
//! - **Samples.** A request that reached agents yields one sample per link it crossed: the network time of
//!   the hop (the caller's wall time minus what the callee reports it spent queueing, computing and
//!   forwarding) with the bytes sent and received. Agents report their own forward calls, so the device
//!   learns the edge→cloud link from the edge's report without asking anyone.
//! - **RTT or goodput.** A sample whose payload is at most [`RTT_PAYLOAD_BYTES`] measures the RTT; any
//!   other measures goodput, after the current RTT estimate is taken off (the transfer time is shared
//!   between the two directions by their predicted times). An estimate two half-lives old restarts from
//!   its next sample.
//! - **Smoothing.** Exponentially weighted (α = 0.3). A sample more than 4× away from the estimate is an
//!   outlier and moves it by α = 0.05 only, unless the previous sample was an outlier on the same side: two
//!   in a row are a change (the network really got worse or better): the estimate restarts from it (α = 1).
//! - **Staleness.** An estimate's weight against the profile halves every [`EstimatorConfig::half_life`]
//!   since its last sample, so a link not used for a while is costed at its profile again (and a plan
//!   over it gets tried again if that makes it the best: bounded exploration, one request per period).
//!   Goodputs blend as time per byte (a slow link measured stays costed as slow until its estimate is old).

use std::time::{Duration, Instant};

use strata_core::Tier;
use strata_core::recost::{Conditions, Link, LinkState, ms_per_byte};

/// A hop that moves at most this many tensor bytes measures the RTT (a couple of packets: on any link
/// slower than a few Mbit/s they still cost a little, which the RTT then carries). Judging by the current
/// goodput estimate instead would let a wrong estimate classify ever larger payloads as RTT samples.
pub const RTT_PAYLOAD_BYTES: f64 = 2048.0;

/// How estimates are smoothed and aged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimatorConfig {
    /// Weight of a new sample.
    pub alpha: f64,
    /// Weight of a lone outlier.
    pub outlier_alpha: f64,
    /// Weight of the second outlier on the same side in a row (a change).
    pub change_alpha: f64,
    /// A sample beyond this factor of the estimate (either way) is an outlier.
    pub outlier_factor: f64,
    /// An estimate's weight against the profile halves every this long without a sample.
    pub half_life: Duration,
}

impl Default for EstimatorConfig {
    /// α 0.3, outliers beyond 4× at 0.05, a change at 1 (the estimate restarts from the sample), a 20 s half-life.
    fn default() -> Self {
        EstimatorConfig {
            alpha: 0.3,
            outlier_alpha: 0.05,
            change_alpha: 1.0,
            outlier_factor: 4.0,
            half_life: Duration::from_secs(20),
        }
    }
}

/// One smoothed quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Smoothed {
    value: Option<f64>,
    last: Option<Instant>,
    /// Side of the previous sample when it was an outlier (+1 above, −1 below).
    outlier_side: i8,
    samples: u64,
}

impl Smoothed {
    /// Takes a sample.
    pub fn update(&mut self, sample: f64, now: Instant, config: &EstimatorConfig) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        self.samples += 1;
        // An estimate two half-lives old is mostly the profile by now: a new sample restarts it rather than
        // being judged an outlier against what it no longer stands for.
        let stale = self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) > 2 * config.half_life);
        let Some(v) = self.value.filter(|_| !stale) else {
            self.value = Some(sample);
            self.last = Some(now);
            return;
        };
        let side = if sample > v * config.outlier_factor {
            1
        } else if sample * config.outlier_factor < v {
            -1
        } else {
            0
        };
        let alpha = match side {
            0 => config.alpha,
            s if s == self.outlier_side => config.change_alpha,
            _ => config.outlier_alpha,
        };
        self.outlier_side = side;
        self.value = Some(v + alpha * (sample - v));
        self.last = Some(now);
    }

    /// The estimate blended with `prior` by age (the prior alone when there is no sample).
    pub fn blended(&self, prior: f64, now: Instant, config: &EstimatorConfig) -> f64 {
        match (self.value, self.last) {
            (Some(v), Some(at)) => {
                let age = now.saturating_duration_since(at).as_secs_f64();
                let w = 0.5f64.powf(age / config.half_life.as_secs_f64().max(1e-3));
                w * v + (1.0 - w) * prior
            }
            _ => prior,
        }
    }

    /// Like [`Smoothed::blended`], for a rate: the blend is of its inverse (time per unit), because time is
    /// what plans are costed in. A link measured at 1 Mbit/s against a 100 Mbit/s profile stays costed near
    /// 1 Mbit/s until its estimate is old, instead of jumping to tens of Mbit/s at the first decay.
    pub fn blended_rate(&self, prior: f64, now: Instant, config: &EstimatorConfig) -> f64 {
        match (self.value, self.last) {
            (Some(v), Some(at)) if v > 0.0 && prior > 0.0 => {
                let age = now.saturating_duration_since(at).as_secs_f64();
                let w = 0.5f64.powf(age / config.half_life.as_secs_f64().max(1e-3));
                1.0 / (w / v + (1.0 - w) / prior)
            }
            _ => self.blended(prior, now, config),
        }
    }

    /// The raw estimate, if any sample came.
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// When the last sample came.
    pub fn last(&self) -> Option<Instant> {
        self.last
    }

    /// Samples taken.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Estimates of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkEstimate {
    /// Round-trip time, ms.
    pub rtt_ms: Smoothed,
    /// Goodput away from the device, Mbit/s.
    pub up_mbps: Smoothed,
    /// Goodput towards the device, Mbit/s.
    pub down_mbps: Smoothed,
}

/// What the client has learnt.
#[derive(Debug, Clone, Default)]
pub struct Estimator {
    /// How samples are weighed.
    pub config: EstimatorConfig,
    /// Per link ([`Link::index`]).
    pub links: [LinkEstimate; 3],
    /// Per tier: measured / predicted compute time.
    pub speed: [Smoothed; 3],
    /// Per tier: queue wait at its agents, ms.
    pub queue_ms: [Smoothed; 3],
    /// Device stages' compute times on this device, by stage digest: a plan's device stage is costed at
    /// its own measured time once it ran (or was calibrated), since one speed factor for all stages is off
    /// by their fixed costs.
    pub device_stages: std::collections::HashMap<String, Smoothed>,
}

impl Estimator {
    /// An estimator with these settings.
    pub fn new(config: EstimatorConfig) -> Estimator {
        Estimator {
            config,
            ..Default::default()
        }
    }

    /// The conditions to cost a table's plans under now: each estimate blended with the table's link
    /// `profile` by its age. Tier speeds are learnt against profiled stage times; a table's stage times were
    /// planned at its `calibration` (each tier's factor, see `RouteTable.tier_calibration`), which is also
    /// the best guess of a tier's speed before any sample, so the speed returned is relative to the table:
    /// blended(learnt, calibration) ÷ calibration.
    pub fn conditions(
        &self,
        profile: &[Option<LinkState>; 3],
        calibration: &[f64; 3],
        now: Instant,
    ) -> Conditions {
        let c = &self.config;
        let mut links = Link::ALL.map(|l| profile[l.index()].map(|p| self.blend(l, p, now)));
        // The device's access link (its radio) carries its traffic to the cloud too: the device→cloud path is
        // no faster than the device→edge link as last measured, unless that path was measured since.
        let (de, dc) = (Link::DeviceEdge.index(), Link::DeviceCloud.index());
        if let (Some(edge), Some(cloud)) = (links[de], links[dc].as_mut()) {
            let (e, d) = (&self.links[de], &self.links[dc]);
            let newer = |a: &Smoothed, b: &Smoothed| {
                a.last().is_some_and(|at| b.last().is_none_or(|bt| at > bt))
            };
            if newer(&e.up_mbps, &d.up_mbps) {
                cloud.up_mbps = cloud.up_mbps.min(edge.up_mbps);
            }
            if newer(&e.down_mbps, &d.down_mbps) {
                cloud.down_mbps = cloud.down_mbps.min(edge.down_mbps);
            }
            if newer(&e.rtt_ms, &d.rtt_ms) {
                cloud.rtt_ms = cloud.rtt_ms.max(edge.rtt_ms);
            }
        }
        Conditions {
            links,
            speed: [0, 1, 2]
                .map(|t| self.speed[t].blended(calibration[t], now, c) / calibration[t]),
            queue_ms: [0, 1, 2].map(|t| self.queue_ms[t].blended(0.0, now, c)),
        }
    }

    /// A hop over `link` took `net_ms` of network time moving `up` bytes up and `down` bytes down. `profile`
    /// is the link's profile (the starting point when nothing was measured yet).
    pub fn link_sample(
        &mut self,
        link: Link,
        profile: Option<LinkState>,
        net_ms: f64,
        up: f64,
        down: f64,
        now: Instant,
    ) {
        if !net_ms.is_finite() || net_ms <= 0.0 {
            return;
        }
        let Some(current) = self.conditions_of(link, profile, now) else {
            return;
        };
        let t_up = up * ms_per_byte(current.up_mbps);
        let t_down = down * ms_per_byte(current.down_mbps);
        let config = self.config;
        let e = &mut self.links[link.index()];
        if up + down <= RTT_PAYLOAD_BYTES {
            e.rtt_ms
                .update((net_ms - t_up - t_down).max(0.0), now, &config);
            return;
        }
        // The transfer's share: what the current RTT estimate leaves (at least a twentieth of the time).
        let transfer = (net_ms - current.rtt_ms).max(0.05 * net_ms);
        let share_up = t_up / (t_up + t_down);
        let to_mbps = |bytes: f64, ms: f64| bytes * 8.0 / (ms * 1e3);
        if up > 0.0 && share_up > 0.2 {
            e.up_mbps
                .update(to_mbps(up, transfer * share_up), now, &config);
        }
        if down > 0.0 && share_up < 0.8 {
            e.down_mbps
                .update(to_mbps(down, transfer * (1.0 - share_up)), now, &config);
        }
    }

    fn conditions_of(
        &self,
        link: Link,
        profile: Option<LinkState>,
        now: Instant,
    ) -> Option<LinkState> {
        let e = &self.links[link.index()];
        let p = profile.or_else(|| {
            Some(LinkState {
                rtt_ms: e.rtt_ms.value()?,
                up_mbps: e.up_mbps.value()?,
                down_mbps: e.down_mbps.value()?,
            })
        })?;
        Some(self.blend(link, p, now))
    }

    /// `link`'s estimates blended with `profile` by their freshness.
    fn blend(&self, link: Link, profile: LinkState, now: Instant) -> LinkState {
        let (c, e) = (&self.config, &self.links[link.index()]);
        LinkState {
            rtt_ms: e.rtt_ms.blended(profile.rtt_ms, now, c),
            up_mbps: e.up_mbps.blended_rate(profile.up_mbps, now, c),
            down_mbps: e.down_mbps.blended_rate(profile.down_mbps, now, c),
        }
    }

    /// A stage on `tier` computed in `measured_ms` whose profiled time (uncalibrated: its planned time over
    /// its table's factor for the tier) is `profiled_ms`.
    pub fn compute_sample(&mut self, tier: Tier, measured_ms: f64, profiled_ms: f64, now: Instant) {
        if profiled_ms > 0.0 && measured_ms.is_finite() && measured_ms >= 0.0 {
            let config = self.config;
            self.speed[tier.index()].update(measured_ms / profiled_ms, now, &config);
        }
    }

    /// Device stage `digest` computed in `ms` here.
    pub fn device_stage_sample(&mut self, digest: &str, ms: f64, now: Instant) {
        let config = self.config;
        self.device_stages
            .entry(digest.to_string())
            .or_default()
            .update(ms, now, &config);
    }

    /// The measured compute time of device stage `digest`, if it ran here.
    pub fn device_stage_ms(&self, digest: &str) -> Option<f64> {
        self.device_stages.get(digest).and_then(Smoothed::value)
    }

    /// A stage on `tier` waited `queue_ms` for a compute slot.
    pub fn queue_sample(&mut self, tier: Tier, queue_ms: f64, now: Instant) {
        let config = self.config;
        self.queue_ms[tier.index()].update(queue_ms, now, &config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Option<LinkState> {
        Some(LinkState {
            rtt_ms: 5.0,
            up_mbps: 40.0,
            down_mbps: 40.0,
        })
    }

    /// Network time of a transfer over a link with this RTT and goodput.
    fn net(rtt: f64, mbps: f64, up: f64, down: f64) -> f64 {
        rtt + (up + down) * ms_per_byte(mbps)
    }

    #[test]
    fn goodput_converges_to_the_link_from_real_transfers() {
        let mut e = Estimator::default();
        let now = Instant::now();
        // The real link: 2 Mbit/s, 5 ms; the device sends 400 kB and gets 4 kB back each time.
        for _ in 0..20 {
            e.link_sample(
                Link::DeviceEdge,
                profile(),
                net(5.0, 2.0, 4e5, 4e3),
                4e5,
                4e3,
                now,
            );
        }
        let c = e.conditions(&[profile(), None, None], &[1.0; 3], now);
        let up = c.links[0].map(|l| l.up_mbps).unwrap_or_default();
        assert!((up - 2.0).abs() / 2.0 < 0.05, "up goodput {up}");
    }

    #[test]
    fn small_payloads_measure_the_rtt() {
        let mut e = Estimator::default();
        let now = Instant::now();
        for _ in 0..30 {
            e.link_sample(
                Link::EdgeCloud,
                profile(),
                net(60.0, 40.0, 100.0, 100.0),
                100.0,
                100.0,
                now,
            );
        }
        let c = e.conditions(&[None, profile(), None], &[1.0; 3], now);
        let rtt = c.links[1].map(|l| l.rtt_ms).unwrap_or_default();
        assert!((rtt - 60.0).abs() < 1.0, "rtt {rtt}");
    }

    #[test]
    fn a_lone_outlier_barely_moves_the_estimate_but_two_in_a_row_are_a_change() {
        let config = EstimatorConfig::default();
        let now = Instant::now();
        let mut s = Smoothed::default();
        for _ in 0..10 {
            s.update(10.0, now, &config);
        }
        s.update(1000.0, now, &config);
        let after_one = s.value().unwrap_or_default();
        assert!(after_one < 10.0 + 0.06 * 990.0, "{after_one}");
        s.update(10.0, now, &config);
        s.update(1000.0, now, &config);
        // Back to normal in between: still a lone outlier.
        assert!(s.value().unwrap_or_default() < 120.0);
        s.update(1000.0, now, &config);
        s.update(1000.0, now, &config);
        assert!(
            s.value().unwrap_or_default() > 500.0,
            "a change is followed"
        );
    }

    #[test]
    fn a_step_down_in_goodput_is_followed_within_three_requests() {
        let mut e = Estimator::default();
        let now = Instant::now();
        for _ in 0..20 {
            e.link_sample(
                Link::DeviceEdge,
                profile(),
                net(5.0, 50.0, 4e5, 4e3),
                4e5,
                4e3,
                now,
            );
        }
        for _ in 0..3 {
            e.link_sample(
                Link::DeviceEdge,
                profile(),
                net(5.0, 2.0, 4e5, 4e3),
                4e5,
                4e3,
                now,
            );
        }
        let up = e.conditions(&[profile(), None, None], &[1.0; 3], now).links[0]
            .map(|l| l.up_mbps)
            .unwrap_or_default();
        assert!(up < 4.0, "after the step: {up} Mbit/s");
    }

    #[test]
    fn stale_estimates_decay_to_the_profile() {
        let mut e = Estimator::default();
        let then = Instant::now();
        for _ in 0..10 {
            e.link_sample(
                Link::DeviceEdge,
                profile(),
                net(5.0, 2.0, 4e5, 0.0),
                4e5,
                0.0,
                then,
            );
        }
        let at = |secs: u64| {
            e.conditions(
                &[profile(), None, None],
                &[1.0; 3],
                then + Duration::from_secs(secs),
            )
            .links[0]
                .map(|l| l.up_mbps)
                .unwrap_or_default()
        };
        assert!(at(0) < 2.5);
        // One half-life: halfway back in time per byte (1 / (½/2 + ½/40) = 3.8 Mbit/s); twenty: the profile.
        assert!((at(20) - 3.81).abs() < 0.1, "{}", at(20));
        assert!((at(400) - 40.0).abs() < 0.1, "{}", at(400));
    }

    #[test]
    fn a_sample_after_a_long_silence_restarts_the_estimate() {
        let config = EstimatorConfig::default();
        let then = Instant::now();
        let mut s = Smoothed::default();
        s.update(1.0, then, &config);
        // Ten half-lives later the link is fast again: not an outlier against a stale 1 Mbit/s.
        s.update(100.0, then + 10 * config.half_life, &config);
        assert_eq!(s.value(), Some(100.0));
    }

    #[test]
    fn tier_speed_and_queue_start_neutral() {
        let mut e = Estimator::default();
        let now = Instant::now();
        let c = e.conditions(&[None; 3], &[1.0; 3], now);
        assert_eq!(c.speed, [1.0; 3]);
        assert_eq!(c.queue_ms, [0.0; 3]);
        e.compute_sample(Tier::Edge, 30.0, 10.0, now);
        e.queue_sample(Tier::Edge, 12.0, now);
        let c = e.conditions(&[None; 3], &[1.0; 3], now);
        assert_eq!(c.speed[1], 3.0);
        assert_eq!(c.queue_ms[1], 12.0);
    }

    #[test]
    fn tier_speeds_are_relative_to_the_calibration_a_table_was_planned_with() {
        let mut e = Estimator::default();
        let now = Instant::now();
        // The edge was planned at twice its profiled time: with nothing learnt, the table is right as it is.
        let planned_at = [1.0, 2.0, 1.0];
        assert_eq!(e.conditions(&[None; 3], &planned_at, now).speed, [1.0; 3]);
        // Learnt: three times the profile. Against a table planned at 2×, 1.5; against an older one at 1×, 3.
        e.compute_sample(Tier::Edge, 30.0, 10.0, now);
        assert_eq!(e.conditions(&[None; 3], &planned_at, now).speed[1], 1.5);
        assert_eq!(e.conditions(&[None; 3], &[1.0; 3], now).speed[1], 3.0);
    }

    #[test]
    fn the_device_cloud_path_is_no_faster_than_the_device_link_measured_last() {
        let mut e = Estimator::default();
        let now = Instant::now();
        let fast = |mbps: f64| LinkState {
            rtt_ms: 10.0,
            up_mbps: mbps,
            down_mbps: mbps,
        };
        let profile = [Some(fast(100.0)), Some(fast(50.0)), Some(fast(50.0))];
        // The device's link turns out to carry 1 Mbit/s (100 kB up in 800 ms + the RTT).
        for _ in 0..6 {
            e.link_sample(Link::DeviceEdge, profile[0], 810.0, 100_000.0, 0.0, now);
        }
        let c = e.conditions(&profile, &[1.0; 3], now);
        let up = |c: &Conditions, l: Link| c.links[l.index()].expect("a link").up_mbps;
        assert!(up(&c, Link::DeviceEdge) < 1.5, "{c:?}");
        assert_eq!(up(&c, Link::DeviceCloud), up(&c, Link::DeviceEdge));
        // Measured itself since, the device→cloud path has its own figure.
        let later = now + Duration::from_millis(10);
        for _ in 0..6 {
            e.link_sample(Link::DeviceCloud, profile[2], 60.0, 250_000.0, 0.0, later);
        }
        let c = e.conditions(&profile, &[1.0; 3], later);
        assert!(up(&c, Link::DeviceCloud) > 20.0, "{c:?}");
    }
}
