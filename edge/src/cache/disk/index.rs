//! The in-memory index: key hash -> packed [`Location`], 16 bytes per entry plus hashbrown's
//! control byte, in one `hashbrown::HashTable` (no per-entry allocation).
//!
//! One entry per hash: a key whose hash equals another's replaces it (the newer record
//! wins), and a read compares the full key stored in the record, so the older key is then a
//! miss, never the other key's object.

use hashbrown::HashTable;

use super::format::Location;

#[derive(Debug, Default)]
pub struct Index {
    table: HashTable<(u64, u64)>,
}

impl Index {
    pub fn get(&self, hash: u64) -> Option<Location> {
        self.table
            .find(hash, |&(h, _)| h == hash)
            .map(|&(_, packed)| Location::unpack(packed))
    }

    /// Points `hash` at `location`, returning where it pointed before.
    pub fn insert(&mut self, hash: u64, location: Location) -> Option<Location> {
        match self.table.entry(hash, |&(h, _)| h == hash, |&(h, _)| h) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => {
                let old = std::mem::replace(&mut entry.get_mut().1, location.pack());
                Some(Location::unpack(old))
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert((hash, location.pack()));
                None
            }
        }
    }

    pub fn remove(&mut self, hash: u64) -> Option<Location> {
        match self.table.find_entry(hash, |&(h, _)| h == hash) {
            Ok(entry) => Some(Location::unpack(entry.remove().0.1)),
            Err(_) => None,
        }
    }

    /// Removes `hash` only while it still points at `location` (a newer record of the key,
    /// written since, stays).
    pub fn remove_if_at(&mut self, hash: u64, location: Location) -> bool {
        let packed = location.pack();
        match self
            .table
            .find_entry(hash, |&(h, p)| h == hash && p == packed)
        {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Removes every entry in segment `slot`: a full scan, for a segment whose footer
    /// cannot be read.
    pub fn remove_slot(&mut self, slot: u32) -> usize {
        let before = self.table.len();
        self.table
            .retain(|&mut (_, packed)| Location::unpack(packed).slot != slot);
        before - self.table.len()
    }

    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |&(h, _)| h);
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn clear(&mut self) {
        self.table = HashTable::new();
    }

    /// Bytes the index holds on the heap: its table's whole allocation (buckets and control
    /// bytes), at whatever load factor it has.
    pub fn bytes(&self) -> usize {
        self.table.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::format::key_hash;

    fn at(slot: u32, offset: u64) -> Location {
        Location {
            slot,
            offset,
            len: 1024,
        }
    }

    /// The target: less than 64 bytes of RAM per object held only on disk, at a
    /// million objects.
    #[test]
    fn index_costs_under_64_bytes_per_entry_at_a_million() {
        const N: u64 = 1_000_000;
        let mut index = Index::default();
        for i in 0..N {
            index.insert(
                key_hash(&i.to_le_bytes()),
                at((i % 1000) as u32, (i % 4096) * 512),
            );
        }
        assert_eq!(index.len(), N as usize);
        let per_entry = index.bytes() as f64 / N as f64;
        assert!(per_entry < 64.0, "{per_entry:.1} B per entry");
        assert!(
            per_entry > 16.0,
            "{per_entry:.1} B per entry: bytes() counts the table"
        );
    }

    #[test]
    fn newer_insert_wins_and_removal_is_conditional() {
        let mut index = Index::default();
        assert_eq!(index.insert(7, at(1, 512)), None);
        assert_eq!(index.insert(7, at(2, 1024)), Some(at(1, 512)));
        assert_eq!(index.get(7), Some(at(2, 1024)));
        assert!(
            !index.remove_if_at(7, at(1, 512)),
            "an older location removes nothing"
        );
        assert_eq!(index.get(7), Some(at(2, 1024)));
        assert!(index.remove_if_at(7, at(2, 1024)));
        assert_eq!(index.get(7), None);
    }

    #[test]
    fn a_slot_is_emptied_by_scan() {
        let mut index = Index::default();
        for hash in 0..100u64 {
            index.insert(hash, at((hash % 4) as u32, hash * 512));
        }
        assert_eq!(index.remove_slot(1), 25);
        assert_eq!(index.len(), 75);
        assert!((0..100u64).all(|h| index.get(h).is_none_or(|l| l.slot != 1)));
    }
}
