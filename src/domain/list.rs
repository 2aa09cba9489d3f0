//! Listing batches: filters, order, page size and the keyset cursor that page
//! tokens carry.

use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::Timestamp;

use super::{Batch, BatchId, BatchLabels, InvalidValue, Label, State};

/// The text filters: each keeps the batches whose field of that name equals
/// the wanted text exactly. Each name is at once the proto requests' field,
/// the web page's query parameter, the `batches` column and the field of
/// [`Batch`] and of a deletion notice; the title is the web form's. This is
/// the one list that [`TextFilters`], [`Texts`], the SQL, the page token's
/// fingerprint, the requests' parsing and the web form come from: calls
/// `$then!` with any tokens given after its name, a `;`, and `name: "Title"`
/// pairs.
macro_rules! with_text_filters {
    ($then:ident $($args:tt)*) => {
        $then! {
            $($args)*;
            provider: "Provider",
            model: "Model",
            topic_filter: "Topic",
            difficulty_filter: "Difficulty"
        }
    };
}
pub(crate) use with_text_filters;

macro_rules! text_filter_types {
    (; $($name:ident: $title:literal),*) => {
        /// The wanted text of each text filter; `None` keeps every batch.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct TextFilters {
            $(pub $name: Option<Label>,)*
        }

        /// A batch's text in each field a text filter looks at.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Texts<'a> {
            $(pub $name: &'a str,)*
        }

        impl TextFilters {
            /// Each filter's name, title and wanted text, in the list's order.
            pub(crate) fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, Option<&Label>)> {
                [$((stringify!($name), $title, self.$name.as_ref())),*].into_iter()
            }

            /// The filters from a lookup by name.
            pub(crate) fn try_from_names<E>(
                mut wanted: impl FnMut(&'static str) -> Result<Option<Label>, E>,
            ) -> Result<Self, E> {
                Ok(Self { $($name: wanted(stringify!($name))?,)* })
            }

            /// Whether every filter keeps a batch with these `texts`.
            pub(crate) fn keep(&self, texts: Texts<'_>) -> bool {
                $(self.$name.as_ref().is_none_or(|wanted| wanted.as_str() == texts.$name))&&*
            }
        }

        /// The [`Texts`] of a value with a text field of each filter's name.
        macro_rules! texts_of {
            ($of:expr) => {
                $crate::domain::Texts { $($name: &$of.$name,)* }
            };
        }
        pub(crate) use texts_of;
    };
}

with_text_filters!(text_filter_types);

/// Which batches a listing includes. Every `None` or empty field matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchFilter {
    /// Any of these; a set, so that the same states in any order or
    /// repeated make the same listing.
    pub(crate) states: BTreeSet<State>,
    pub(crate) texts: TextFilters,
    /// Labels a batch must all have.
    pub(crate) labels: BatchLabels,
    /// Inclusive.
    pub(crate) started_after: Option<Timestamp>,
    /// Exclusive.
    pub(crate) started_before: Option<Timestamp>,
}

/// What a [`BatchFilter`] looks at in a batch: enough to filter a batch
/// that is gone, from what its deletion announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facets<'a> {
    pub state: State,
    pub texts: Texts<'a>,
    pub labels: &'a BatchLabels,
    pub start_time: Timestamp,
}

impl Batch {
    /// The parts of this batch that filters look at.
    pub(crate) fn facets(&self) -> Facets<'_> {
        Facets {
            state: self.state,
            texts: texts_of!(self),
            labels: &self.labels,
            start_time: self.start_time,
        }
    }
}

impl BatchFilter {
    /// Whether this filter keeps a batch (as the listing's SQL does).
    pub fn matches(&self, batch: Facets<'_>) -> bool {
        self.matches_state(batch.state) && self.matches_all_but_state(batch)
    }

    /// Whether this filter's states keep `state`.
    pub(crate) fn matches_state(&self, state: State) -> bool {
        self.states.is_empty() || self.states.contains(&state)
    }

    /// Whether this filter keeps a batch in some state.
    pub(crate) fn matches_all_but_state(&self, batch: Facets<'_>) -> bool {
        self.texts.keep(batch.texts)
            && self.labels.within(batch.labels)
            && self
                .started_after
                .is_none_or(|after| batch.start_time >= after)
            && self
                .started_before
                .is_none_or(|before| batch.start_time < before)
    }

    /// Feeds a canonical encoding of the filter to `hash`.
    fn fingerprint_into(&self, hash: &mut Fnv1a) {
        hash.write(&[self.states.len() as u8]);
        for state in &self.states {
            hash.write(state.as_str().as_bytes());
            hash.write(&[0]);
        }
        for (_, _, label) in self.texts.each() {
            match label {
                Some(label) => {
                    hash.write(&[1]);
                    hash.write(&(label.as_str().len() as u64).to_le_bytes());
                    hash.write(label.as_str().as_bytes());
                }
                None => hash.write(&[0]),
            }
        }
        for bound in [self.started_after, self.started_before] {
            match bound {
                Some(time) => {
                    hash.write(&[1]);
                    hash.write(&time.as_microsecond().to_le_bytes());
                }
                None => hash.write(&[0]),
            }
        }
        // Only when set, so that tokens issued before labels existed still read.
        for (key, value) in self.labels.iter() {
            for text in [key, value] {
                hash.write(&(text.len() as u64).to_le_bytes());
                hash.write(text.as_bytes());
            }
        }
    }
}

/// Order of a listing, by start time then id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    NewestFirst,
    OldestFirst,
}

/// Batches per page: 1 to [`PageSize::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u16);

impl PageSize {
    pub(crate) const DEFAULT: u16 = 50;
    pub(crate) const MAX: u16 = 1_000;

    /// 0 means the default, more than the maximum means the maximum.
    pub(crate) fn parse(requested: i32) -> Result<Self, InvalidValue> {
        match requested {
            ..0 => Err(InvalidValue("must be zero or more".into())),
            0 => Ok(Self::standard()),
            n => Ok(Self(n.min(i32::from(Self::MAX)) as u16)),
        }
    }

    /// The page size of a request that names none.
    pub(crate) const fn standard() -> Self {
        Self(Self::DEFAULT)
    }

    /// The largest page.
    pub(crate) const fn largest() -> Self {
        Self(Self::MAX)
    }

    pub(crate) fn get(self) -> u16 {
        self.0
    }
}

/// Position after the last batch of a page: listings continue strictly past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) start_time: Timestamp,
    pub(crate) batch_id: BatchId,
}

impl Cursor {
    const VERSION: u8 = 1;

    /// The cursor that continues after `batch`.
    pub(crate) fn after(batch: &Batch) -> Self {
        Self {
            start_time: batch.start_time,
            batch_id: batch.batch_id.clone(),
        }
    }

    /// An opaque page token for this cursor, bound to the listing that made it.
    pub(crate) fn to_token(&self, filter: &BatchFilter, order: Order) -> String {
        let id = self.batch_id.as_str().as_bytes();
        let mut bytes = Vec::with_capacity(1 + 8 + 8 + 1 + id.len() + 8);
        bytes.push(Self::VERSION);
        bytes.extend_from_slice(&listing_fingerprint(filter, order).to_le_bytes());
        bytes.extend_from_slice(&self.start_time.as_microsecond().to_le_bytes());
        // Ids are at most 100 bytes, so their length fits in one byte.
        bytes.push(id.len() as u8);
        bytes.extend_from_slice(id);
        let checksum = Fnv1a::of(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token made by [`Cursor::to_token`] for the same listing.
    /// Tokens are checked for damage and for the listing they belong to; they
    /// are not secret, and a forged one can only move where a page starts.
    pub(crate) fn from_token(
        token: &str,
        filter: &BatchFilter,
        order: Order,
    ) -> Result<Self, InvalidValue> {
        let malformed = || InvalidValue("is not a page token this service issued".into());
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        let (body, checksum) = bytes.split_last_chunk::<8>().ok_or_else(malformed)?;
        if Fnv1a::of(body) != u64::from_le_bytes(*checksum) {
            return Err(malformed());
        }
        let (&version, rest) = body.split_first().ok_or_else(malformed)?;
        let (fingerprint, rest) = rest.split_first_chunk::<8>().ok_or_else(malformed)?;
        let (micros, rest) = rest.split_first_chunk::<8>().ok_or_else(malformed)?;
        let (&id_len, id) = rest.split_first().ok_or_else(malformed)?;
        if version != Self::VERSION || id.len() != usize::from(id_len) {
            return Err(malformed());
        }
        if u64::from_le_bytes(*fingerprint) != listing_fingerprint(filter, order) {
            return Err(InvalidValue(
                "belongs to a listing with other filters or order; \
                 repeat the request's filters and order, or start from an empty token"
                    .into(),
            ));
        }
        let start_time =
            Timestamp::from_microsecond(i64::from_le_bytes(*micros)).map_err(|_| malformed())?;
        let batch_id = String::from_utf8(id.to_vec())
            .ok()
            .and_then(|id| BatchId::parse(id).ok())
            .ok_or_else(malformed)?;
        Ok(Self {
            start_time,
            batch_id,
        })
    }
}

/// One page of a listing request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub(crate) filter: BatchFilter,
    pub(crate) order: Order,
    pub(crate) page_size: PageSize,
    /// `None` for the first page.
    pub(crate) after: Option<Cursor>,
    /// How much of each batch to read.
    pub(crate) detail: Detail,
}

/// A lookup of many batches by id, answered in the order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchGet {
    /// 1 to [`BatchGet::MAX_IDS`]; repeats allowed.
    pub(crate) batch_ids: Vec<BatchId>,
    pub(crate) detail: Detail,
}

impl BatchGet {
    /// The most ids one lookup takes (AIP-231's usual bound).
    pub(crate) const MAX_IDS: usize = 1_000;
}

/// How much of each batch a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Full,
    /// Without the bodies of errors and model switches (their counts
    /// stay): what a table of batches shows, at a fraction of the cost.
    Basic,
}

/// One page of batches, and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub(crate) batches: Vec<Batch>,
    /// `None` on the last page.
    pub(crate) next: Option<Cursor>,
}

fn listing_fingerprint(filter: &BatchFilter, order: Order) -> u64 {
    let mut hash = Fnv1a::default();
    hash.write(&[match order {
        Order::NewestFirst => 0,
        Order::OldestFirst => 1,
    }]);
    filter.fingerprint_into(&mut hash);
    hash.0
}

/// 64-bit FNV-1a: a small, stable hash (unlike `std`'s, which may change
/// between Rust releases and would void tokens issued by an older build).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn of(bytes: &[u8]) -> u64 {
        let mut hash = Self::default();
        hash.write(bytes);
        hash.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            start_time: Timestamp::from_microsecond(1_760_000_000_123_456).unwrap(),
            batch_id: BatchId::parse("batch_1760000000_0a1b2c3d".into()).unwrap(),
        }
    }

    fn groq_running() -> BatchFilter {
        BatchFilter {
            texts: TextFilters {
                provider: Some(Label::parse("groq".into()).unwrap()),
                ..TextFilters::default()
            },
            states: BTreeSet::from([State::Running]),
            ..BatchFilter::default()
        }
    }

    #[test]
    fn tokens_round_trip() {
        let filter = groq_running();
        let token = cursor().to_token(&filter, Order::OldestFirst);
        assert_eq!(
            Cursor::from_token(&token, &filter, Order::OldestFirst),
            Ok(cursor())
        );
    }

    /// A token this service issued before the filter fields were declared
    /// in one list, for a listing that sets every filter: tokens already in
    /// callers' hands must keep working across such changes.
    #[test]
    fn a_token_issued_by_an_earlier_build_still_reads() {
        let label = |text: &str| Some(Label::parse(text.into()).unwrap());
        let filter = BatchFilter {
            states: BTreeSet::from([State::Failed, State::Running]),
            texts: TextFilters {
                provider: label("groq"),
                model: label("llama-3.3-70b"),
                topic_filter: label("contracts"),
                difficulty_filter: label("advanced"),
            },
            labels: BatchLabels::default(),
            started_after: Some(Timestamp::from_second(1_750_000_000).unwrap()),
            started_before: Some(Timestamp::from_second(1_770_000_000).unwrap()),
        };
        const ISSUED: &str = "Abkp6h8iCyBHQOLP7rVABgAZYmF0Y2hfMTc2MDAwMDAwMF8wYTFiMmMzZJIdwQPZF6Yv";
        assert_eq!(
            Cursor::from_token(ISSUED, &filter, Order::OldestFirst),
            Ok(cursor())
        );
        assert_eq!(cursor().to_token(&filter, Order::OldestFirst), ISSUED);
    }

    #[test]
    fn state_sets_are_compared_as_sets() {
        let token = cursor().to_token(
            &BatchFilter {
                states: [State::Failed, State::Running].into_iter().collect(),
                ..BatchFilter::default()
            },
            Order::NewestFirst,
        );
        let same = BatchFilter {
            states: [State::Running, State::Failed, State::Running]
                .into_iter()
                .collect(),
            ..BatchFilter::default()
        };
        assert!(Cursor::from_token(&token, &same, Order::NewestFirst).is_ok());
    }

    #[test]
    fn tokens_are_bound_to_filter_and_order() {
        let filter = groq_running();
        let token = cursor().to_token(&filter, Order::NewestFirst);
        assert!(Cursor::from_token(&token, &filter, Order::OldestFirst).is_err());
        assert!(Cursor::from_token(&token, &BatchFilter::default(), Order::NewestFirst).is_err());
        let other_provider = BatchFilter {
            texts: TextFilters {
                provider: Some(Label::parse("cerebras".into()).unwrap()),
                ..TextFilters::default()
            },
            ..filter.clone()
        };
        assert!(Cursor::from_token(&token, &other_provider, Order::NewestFirst).is_err());
    }

    #[test]
    fn any_damaged_byte_is_detected() {
        let filter = BatchFilter::default();
        let token = cursor().to_token(&filter, Order::NewestFirst);
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let damaged = URL_SAFE_NO_PAD.encode(damaged);
            assert!(
                Cursor::from_token(&damaged, &filter, Order::NewestFirst).is_err(),
                "byte {i}"
            );
        }
        for garbage in ["", "x", "not base64!", &token[..token.len() - 2]] {
            assert!(Cursor::from_token(garbage, &filter, Order::NewestFirst).is_err());
        }
    }

    #[test]
    fn page_size_rules() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 50);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(5_000).unwrap().get(), 1_000);
        assert_eq!(PageSize::parse(i32::MAX).unwrap().get(), 1_000);
        assert!(PageSize::parse(-1).is_err());
    }
}
