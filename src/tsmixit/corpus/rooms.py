"""Reverberant multi-microphone rooms: a precomputed bank of room impulse responses.

Shoebox rooms simulated with pyroomacoustics' image-source method. Each room gets a nominal
RT60 drawn from a range; Sabine's formula (pyroomacoustics.inverse_sabine) gives the wall
absorption, and the image-source order is capped for speed, so the simulated tail is cut
short of the nominal RT60 in large, reverberant rooms. A small random array of C microphones
(microphone 0 at its centre, the others uniformly inside a ball of a few centimetres) and P
candidate source positions are drawn per room; the bank stores every (room, position) RIR.

Bank layout (rooms.npz): "rirs" (n_rooms * P, C, L) float32 at the corpus sample rate, RIR
index = room * P + position; "rt60" (n_rooms,) nominal seconds; "room_dims" (n_rooms, 3) m.
"""

from dataclasses import dataclass

import numpy as np
import pyroomacoustics as pra
from scipy import fft as sp_fft


@dataclass(frozen=True)
class RoomBank:
    """RIRs (n_rooms * positions, C, L) and the rooms' nominal RT60s and dimensions."""

    rirs: np.ndarray
    rt60: np.ndarray
    room_dims: np.ndarray
    positions: int

    def rir_index(self, room: int, position: int) -> int:
        return room * self.positions + position

    def save(self, path) -> None:
        np.savez(path, rirs=self.rirs, rt60=self.rt60, room_dims=self.room_dims,
                 positions=np.int64(self.positions))

    @classmethod
    def load(cls, path) -> "RoomBank":
        with np.load(path) as z:
            return cls(z["rirs"], z["rt60"], z["room_dims"], int(z["positions"]))


def _inside(p: np.ndarray, dims: np.ndarray, margin: float) -> bool:
    return bool(np.all(p >= margin) and np.all(p <= dims - margin))


def simulate_room(rng: np.random.Generator, sample_rate: int, n_mics: int, positions: int,
                  rt60_range: tuple[float, float], max_order: int) -> tuple[np.ndarray, float,
                                                                          np.ndarray]:
    """One random shoebox room: returns (RIRs (positions, C, L_room), RT60, dims)."""
    dims = np.array([rng.uniform(4.0, 9.0), rng.uniform(3.0, 7.0), rng.uniform(2.5, 3.5)])
    rt60 = float(rng.uniform(*rt60_range))
    absorption, order = pra.inverse_sabine(rt60, dims.tolist())
    room = pra.ShoeBox(dims.tolist(), fs=sample_rate, materials=pra.Material(absorption),
                       max_order=min(order, max_order), air_absorption=False)
    # array centre at least 1 m from the side walls, 1.0-1.5 m high
    centre = np.array([rng.uniform(1.0, dims[0] - 1.0), rng.uniform(1.0, dims[1] - 1.0),
                       rng.uniform(1.0, 1.5)])
    radius = rng.uniform(0.04, 0.12)
    offsets = rng.normal(size=(n_mics, 3))
    offsets /= np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets *= radius * rng.uniform(0.3, 1.0, size=(n_mics, 1)) ** (1 / 3)
    offsets[0] = 0.0
    room.add_microphone_array((centre + offsets).T)  # (3, C)
    placed = 0
    while placed < positions:  # talkers 0.75-2.5 m from the array, 0.5 m from the walls
        azimuth, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.75, 2.5)
        source = np.array([centre[0] + distance * np.cos(azimuth),
                           centre[1] + distance * np.sin(azimuth), rng.uniform(1.2, 1.9)])
        if _inside(source, dims, 0.5):
            room.add_source(source.tolist())
            placed += 1
    room.compute_rir()
    length = max(len(room.rir[m][s]) for m in range(n_mics) for s in range(positions))
    rirs = np.zeros((positions, n_mics, length), np.float32)
    for m in range(n_mics):
        for s in range(positions):
            rirs[s, m, : len(room.rir[m][s])] = room.rir[m][s]
    return rirs, rt60, dims


def make_room_bank(rng: np.random.Generator, n_rooms: int, sample_rate: int, n_mics: int,
                   positions: int, rt60_range: tuple[float, float] = (0.2, 0.6),
                   max_order: int = 20) -> RoomBank:
    """Simulate `n_rooms` rooms; RIRs zero-padded to a common length L."""
    rooms = [simulate_room(rng, sample_rate, n_mics, positions, rt60_range, max_order)
             for _ in range(n_rooms)]
    length = max(r.shape[-1] for r, _, _ in rooms)
    rirs = np.zeros((n_rooms * positions, n_mics, length), np.float32)
    for k, (r, _, _) in enumerate(rooms):
        rirs[k * positions:(k + 1) * positions, :, : r.shape[-1]] = r
    return RoomBank(rirs, np.array([r[1] for r in rooms]), np.stack([r[2] for r in rooms]),
                    positions)


def image(audio: np.ndarray, rir: np.ndarray | None, n_channels: int,
          num_frames: int) -> np.ndarray:
    """The first `num_frames` samples of a dry source's (T,) image at the microphones,
    (C, num_frames): the convolution with an RIR (C, L), or without one the dry signal on
    every channel; zero-padded when shorter.

    Only the first N samples are needed, so the source is cut to N before one FFT and all
    C channels share it (FFT length >= N + L - 1: no circular wrap-around). Computed in
    float32 (twice as fast; the result serves only to set gains, relative error ~1e-7).
    """
    x = audio[:num_frames]
    if rir is None:
        out = np.zeros((n_channels, num_frames))
        out[:, : len(x)] = x
        return out
    n_fft = sp_fft.next_fast_len(len(x) + rir.shape[-1] - 1, real=True)
    spectrum = sp_fft.rfft(x.astype(np.float32), n_fft) * sp_fft.rfft(
        rir.astype(np.float32), n_fft, axis=-1)  # (C, F)
    full = sp_fft.irfft(spectrum, n_fft, axis=-1)  # (C, n_fft)
    out = np.zeros((n_channels, num_frames))
    n = min(num_frames, len(x) + rir.shape[-1] - 1)
    out[:, :n] = full[:, :n]
    return out
