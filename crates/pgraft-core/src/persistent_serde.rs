//! serde for imbl's persistent collections that never trusts a length read from the input.
//!
//! imbl's own `Deserialize` reserves room for as many elements as the input claims before
//! reading any: a snapshot image or peer message that claims 10^16 keys aborts the process
//! on allocation (the decoder fuzz test found it). These build the collection one element
//! at a time instead, so memory follows the bytes actually present. The encoding is the
//! same as imbl's (a serde map, a serde sequence).

use std::fmt;
use std::marker::PhantomData;

use imbl::{OrdMap, Vector};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `#[serde(with = "crate::persistent_serde::ord_map")]`.
pub mod ord_map {
    use super::*;

    /// Writes the map as a serde map.
    pub fn serialize<S: Serializer, K: Serialize + Ord + Clone, V: Serialize + Clone>(
        m: &OrdMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter())
    }

    /// Reads a serde map entry by entry.
    pub fn deserialize<'de, D, K, V>(d: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Ord + Clone, V: Deserialize<'de> + Clone> Visitor<'de> for MapVisitor<K, V> {
            type Value = OrdMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut m = OrdMap::new();
                while let Some((k, v)) = access.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// `#[serde(with = "crate::persistent_serde::vector")]`.
pub mod vector {
    use super::*;

    /// Writes the vector as a serde sequence.
    pub fn serialize<S: Serializer, T: Serialize + Clone>(v: &Vector<T>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter())
    }

    /// Reads a serde sequence element by element.
    pub fn deserialize<'de, D, T>(d: D) -> Result<Vector<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Clone,
    {
        struct SeqVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Clone> Visitor<'de> for SeqVisitor<T> {
            type Value = Vector<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut v = Vector::new();
                while let Some(x) = access.next_element()? {
                    v.push_back(x);
                }
                Ok(v)
            }
        }
        d.deserialize_seq(SeqVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "ord_map")]
        m: OrdMap<String, u32>,
        #[serde(with = "vector")]
        v: Vector<u8>,
    }

    #[test]
    fn round_trips_and_lies_about_length_cost_nothing() {
        let b = Both {
            m: [("a".to_string(), 1u32), ("b".to_string(), 2u32)].into_iter().collect(),
            v: (0..5).collect(),
        };
        let bytes = postcard::to_stdvec(&b).expect("encodes");
        assert_eq!(postcard::from_bytes::<Both>(&bytes).expect("decodes"), b);
        // A map that claims 2^60 entries and holds none: an error, not an abort.
        let mut lie = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        lie.push(0);
        assert!(postcard::from_bytes::<Both>(&lie).is_err());
    }
}
