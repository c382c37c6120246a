//! Everything a query is answered from, built whole from one config and swapped whole on
//! reload, so a query never sees half of an old config and half of a new one.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::{ConfigError, GeoDnsConfig, HealthConfig};
use crate::fast_path::{FastName, wire_name};
use crate::geo::{CidrOverrides, Locator, MmdbLocator};
use crate::health::EdgeHealth;
use crate::static_answers::StaticAnswers;
use crate::steering::Regions;
use crate::zone::Zone;

/// The answering state of one config.
#[derive(Debug)]
pub struct State {
    pub zone: Zone,
    pub regions: Regions,
    pub locator: Locator,
    pub ecs: bool,
    pub health: HealthConfig,
    /// Customer, region and static names in lower-case wire form, for
    /// [`crate::fast_path`].
    pub fast_names: FxHashMap<Vec<u8>, FastName>,
    /// The zone's answers that are the same for every client, encoded for
    /// [`crate::fast_path`] from this config's zone.
    pub static_answers: StaticAnswers,
    /// `<region>.edge.<zone>` in wire form, by region index.
    pub region_wire_names: Vec<Vec<u8>>,
    pub zone_max_answers: usize,
    pub config: GeoDnsConfig,
}

impl State {
    /// Builds the state of a validated config. `health` carries the probe states of the
    /// edges that are still configured (empty at start).
    pub fn new(
        config: GeoDnsConfig,
        health: &HashMap<String, Arc<EdgeHealth>>,
    ) -> Result<Self, ConfigError> {
        let zone = Zone::new(&config).map_err(|e| ConfigError::Invalid {
            field: "zone".into(),
            message: e.to_string(),
        })?;
        let database = match &config.geo.database {
            Some(path) => Some(MmdbLocator::open(path).map_err(|e| ConfigError::Invalid {
                field: "geo.database".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let overrides = CidrOverrides::new(
            config
                .geo
                .overrides
                .iter()
                .map(|o| (o.cidr, o.region.to_ascii_lowercase())),
        )
        .map_err(|e| ConfigError::Invalid {
            field: "geo.overrides".into(),
            message: e.to_string(),
        })?;
        let regions = Regions::new(&config.regions, &config.geo.default_region, health);
        let zone_name = &config.zone.name;
        let region_wire_names: Vec<Vec<u8>> = config
            .regions
            .iter()
            .map(|r| wire_name(&format!("{}.edge.{zone_name}", r.name)))
            .collect();
        let static_answers = StaticAnswers::new(&zone, &regions);
        // Later entries win, as in `Zone::answer`: a region's name over a customer's, and
        // either over a static name (which `Zone::static_names` leaves out anyway).
        let mut fast_names: FxHashMap<Vec<u8>, FastName> = static_answers
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.wire.clone(), FastName::Static(i)))
            .collect();
        for (i, c) in config.customers.iter().enumerate() {
            fast_names.insert(
                wire_name(&format!("{}.{zone_name}", c.name)),
                FastName::Customer(i),
            );
        }
        for (i, name) in region_wire_names.iter().enumerate() {
            fast_names.insert(name.clone(), FastName::Region(i));
        }
        Ok(Self {
            fast_names,
            static_answers,
            region_wire_names,
            zone_max_answers: config.zone.max_answers,
            zone,
            regions,
            locator: Locator::new(overrides, database),
            ecs: config.geo.ecs,
            health: config.health.clone(),
            config,
        })
    }
}
