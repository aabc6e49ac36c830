//! The stream of training batches and each rank's share of it.
//!
//! Epoch `e`'s batches are `plan_for(e)` (a function of the seed and the epoch); the epochs
//! follow one another as one stream. A micro-batch of a data-parallel update is a group of
//! `size` consecutive batches of that stream, of which rank `r` takes the `r`-th: the ranks
//! read disjoint shares, together the same batches one process with `size` times the gradient
//! accumulation reads, in the same order. The position in the stream is (epoch, index of the
//! epoch's first batch in the stream, batches of the epoch consumed), saved with each
//! checkpoint, so a run resumed with another number of ranks continues where it stopped.

use std::collections::HashMap;

use crate::{Error, Result};

/// Where the stream is: the next group starts at batch `batch_in_epoch` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    /// Index in the stream of the epoch's first batch.
    pub epoch_start: usize,
    pub batch_in_epoch: usize,
}

/// This rank's batches, decoded ahead by a loader per epoch (`I`: a
/// [`speechtune_data::Loader`] in training).
pub struct Stream<P, L, I> {
    plan_for: P,
    make_loader: L,
    rank: usize,
    size: usize,
    /// Stream index of the first group read by this stream (where it was created).
    origin: usize,
    lens: HashMap<u64, usize>,
    current: Option<(u64, I)>,
}

impl<P, L, I> Stream<P, L, I>
where
    P: Fn(u64) -> Vec<Vec<usize>>,
    L: Fn(Vec<Vec<usize>>) -> I,
    I: Iterator,
{
    pub fn new(plan_for: P, make_loader: L, rank: usize, size: usize, at: Position) -> Self {
        let origin = at.epoch_start + at.batch_in_epoch;
        Self { plan_for, make_loader, rank, size, origin, lens: HashMap::new(), current: None }
    }

    fn len(&mut self, epoch: u64) -> Result<usize> {
        if let Some(&n) = self.lens.get(&epoch) {
            return Ok(n);
        }
        let n = (self.plan_for)(epoch).len();
        if n == 0 {
            return Err(Error::Diverged("no training batches".into()));
        }
        self.lens.insert(epoch, n);
        Ok(n)
    }

    /// `at` moved `n` batches on, across epoch boundaries.
    fn advance(&mut self, at: Position, n: usize) -> Result<Position> {
        let mut p = Position { batch_in_epoch: at.batch_in_epoch + n, ..at };
        loop {
            let len = self.len(p.epoch)?;
            if p.batch_in_epoch < len {
                return Ok(p);
            }
            p = Position {
                epoch: p.epoch + 1,
                epoch_start: p.epoch_start + len,
                batch_in_epoch: p.batch_in_epoch - len,
            };
        }
    }

    /// This rank's batch of the group at `at`, and `at` moved past the group.
    pub fn next(&mut self, at: &mut Position) -> Result<I::Item> {
        let mine = self.advance(*at, self.rank)?;
        if self.current.as_ref().is_none_or(|(e, _)| *e != mine.epoch) {
            // This rank's batches of the epoch from `mine` on: every `size`-th of the stream.
            let (origin, size, rank) = (self.origin, self.size, self.rank);
            let plan: Vec<Vec<usize>> = (self.plan_for)(mine.epoch)
                .into_iter()
                .enumerate()
                .skip(mine.batch_in_epoch)
                .filter(|(i, _)| (mine.epoch_start + i - origin) % size == rank)
                .map(|(_, b)| b)
                .collect();
            self.current = Some((mine.epoch, (self.make_loader)(plan)));
        }
        let (_, loader) = self.current.as_mut().expect("a loader for this epoch");
        let batch = loader.next().ok_or_else(|| Error::Diverged("the batch plan ended early".into()))?;
        *at = self.advance(*at, self.size)?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Batches = std::vec::IntoIter<Vec<usize>>;
    type TestStream = Stream<fn(u64) -> Vec<Vec<usize>>, fn(Vec<Vec<usize>>) -> Batches, Batches>;

    /// Epoch e has 5 batches (3 in epoch 1), each named by [epoch, index].
    fn plan_for(e: u64) -> Vec<Vec<usize>> {
        (0..if e == 1 { 3 } else { 5 }).map(|i| vec![e as usize, i]).collect()
    }

    fn batches(plan: Vec<Vec<usize>>) -> Batches {
        plan.into_iter()
    }

    fn stream(rank: usize, size: usize, at: Position) -> TestStream {
        Stream::new(plan_for, batches, rank, size, at)
    }

    fn read(rank: usize, size: usize, at: &mut Position, groups: usize) -> Vec<Vec<usize>> {
        let mut s = stream(rank, size, *at);
        (0..groups).map(|_| s.next(at).unwrap()).collect()
    }

    const START: Position = Position { epoch: 0, epoch_start: 0, batch_in_epoch: 0 };

    #[test]
    fn ranks_read_disjoint_shares_that_interleave_into_the_single_stream() {
        let mut one = START;
        let single = read(0, 1, &mut one, 12);
        let (mut a, mut b) = (START, START);
        let r0 = read(0, 2, &mut a, 6);
        let r1 = read(1, 2, &mut b, 6);
        assert_eq!(a, b, "every rank ends at the same position");
        assert_eq!(a, one, "the same position as one process reading both shares");
        let merged: Vec<Vec<usize>> = r0.iter().zip(&r1).flat_map(|(x, y)| [x.clone(), y.clone()]).collect();
        assert_eq!(merged, single);
        // Across epochs of 5 and 3 batches: epoch 2 starts at stream index 8.
        assert_eq!(single[8], vec![2, 0]);
        assert_eq!(one, Position { epoch: 2, epoch_start: 8, batch_in_epoch: 4 });
    }

    #[test]
    fn a_stream_resumed_with_another_number_of_ranks_continues_the_same_sequence() {
        let mut one = START;
        let single = read(0, 1, &mut one, 13);
        // 3 groups of 2 ranks, then 7 batches by 1 rank from the saved position.
        let (mut a, mut b) = (START, START);
        let r0 = read(0, 2, &mut a, 3);
        let r1 = read(1, 2, &mut b, 3);
        let rest = read(0, 1, &mut a, 7);
        let mut got: Vec<Vec<usize>> = r0.iter().zip(&r1).flat_map(|(x, y)| [x.clone(), y.clone()]).collect();
        got.extend(rest);
        assert_eq!(got, single);
        assert_eq!(a, one);
    }

    #[test]
    fn an_empty_epoch_is_an_error_not_a_loop() {
        let mut s = Stream::new(|_| Vec::new(), |p: Vec<Vec<usize>>| p.into_iter(), 0, 2, START);
        let mut at = START;
        assert!(s.next(&mut at).unwrap_err().to_string().contains("no training batches"));
    }
}
