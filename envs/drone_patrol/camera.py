"""The rendered camera sensor ('camera'): a small downward RGB image per drone, from PyBullet.

An observation is one flat float32 vector ``[pixels (camera_px * camera_px * 3), telemetry (4)]``:

- pixels: the image in HWC order (row 0 = north edge, column 0 = west edge: the camera is
  gimballed straight down and north-up, so a drone's yaw never rotates the view), each value
  ``rgb / 255 + N(0, PIXEL_NOISE^2)`` clipped to [0, 1];
- telemetry: as the feature sensor's (``sensor.TELEMETRY_NAMES``).

The agents read it as an image plus a 4-dim vector (``DronePatrolWorld.input_config``).

The scene (``CameraScene``). PyBullet's tiny software renderer (``ER_TINY_RENDERER``: no GL
context, works in ``DIRECT`` mode) renders in the world's own physics client, from each drone's
position. The camera adds collision-free flat ground tiles there, coloured by zone, with the river
on top, and shows only the markers of active events (``physics``); ``physics.reset`` clears the
client, so the world calls ``attach`` after every reset. No shadows; light from straight above.

What a drone sees: straight down from altitude ``a``, the image covers a ground square of side
``2 a tan(fov / 2)`` (6.9 m at 6 m and 60 degrees). The true class stays the event at the nearest
cruise point within ``sensing_radius_m`` (as for the feature sensor), so an event a few metres
outside the footprint is in the label but not in the image: the edge of view is hard, as with
the feature sensor's fading visibility.

Probe sets render in a second PyBullet client (``render_probe``), so the live episode is never
touched.
"""

from __future__ import annotations

import numpy as np

try:
    import pybullet as p
except ImportError as exc:  # pragma: no cover - pybullet is a core dependency
    raise ImportError(
        "the camera sensor needs pybullet: pip install 'yan-swarm' (or pip install pybullet)"
    ) from exc

from envs.drone_patrol.config import ZONES, DronePatrolConfig
from envs.drone_patrol.layout import PatrolMap
from envs.drone_patrol.physics import DronePhysics
from envs.drone_patrol.sensor import TELEMETRY_DIM

CHANNELS = 3  # RGB
#: Ground colour of each zone (RGB in [0, 1]), chosen to differ from each other and from the
#: markers that appear there (physics._MARKERS: orange fire on green forest, brown garbage on
#: grey city, grey flotsam on blue water, a red sign on sand-coloured industrial ground).
ZONE_RGB: dict[str, tuple[float, float, float]] = {
    "forest": (0.13, 0.40, 0.13),
    "city": (0.38, 0.38, 0.42),
    "river": (0.50, 0.66, 0.32),  # meadow around the water
    "industrial": (0.66, 0.58, 0.42),
}
WATER_RGB = (0.12, 0.30, 0.70)
#: River width: a drone over a river cruise point sees water on most of its footprint
#: (6.9 m at cruise altitude) and the 1.6 m flotsam marker floats well inside it. Narrower than
#: twice the meander's smallest radius of curvature (10 m at the default map), so the water
#: strip never folds over itself.
RIVER_WIDTH_M = 6.0
#: Heights of the zone tiles and of the water, a centimetre apart and above the physics ground
#: plane (z = 0), so that no two surfaces tie in the depth buffer.
TILE_Z_M = 0.01
WATER_Z_M = 0.02
#: Near plane beyond the drone's own body (15 mm half height, camera at its centre), so the
#: drone never sees itself.
NEAR_M = 0.05
#: Far plane this far below the ground: the whole scene above ground is drawn, nothing below.
FAR_BELOW_GROUND_M = 1.0
#: Std of the Gaussian pixel noise, in [0, 1] units (about 5 grey levels of 255): a cheap
#: sensor's read noise, so that no two frames are identical.
PIXEL_NOISE = 0.02
#: Light straight from above: every flat top is lit alike, whatever its place.
LIGHT_DIRECTION = (0.0, 0.0, 1.0)
_UP = (0.0, 1.0, 0.0)  # image top = north
_HIDDEN = (1.0, 1.0, 1.0, 0.0)  # alpha 0: the tiny renderer skips the shape altogether


def observation_dim(cfg: DronePatrolConfig) -> int:
    """Width of one flat observation of the configured sensor (``cfg.sensor``)."""
    if cfg.sensor == "camera":
        return cfg.camera_px * cfg.camera_px * CHANNELS + TELEMETRY_DIM
    return cfg.feature_dim + TELEMETRY_DIM


def telemetry(altitude: np.ndarray, speed: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """The 4 telemetry dims of ``sensor.TELEMETRY_NAMES``; inputs share a shape S -> (*S, 4)."""
    return np.stack([altitude / 10.0, speed / 10.0, np.sin(heading), np.cos(heading)], -1)


def _flat_mesh(cid: int, xy: np.ndarray, z: float, tris: list[int], rgb: tuple[float, ...]) -> int:
    """A collision-free, massless body of flat triangles: xy (V, 2) vertices at height z, tris
    vertex indices (3 per triangle, counter-clockwise seen from above)."""
    shape = p.createVisualShape(
        p.GEOM_MESH,
        vertices=[[x, y, z] for x, y in xy.tolist()],
        indices=tris,
        normals=[[0.0, 0.0, 1.0]] * len(xy),
        rgbaColor=[*rgb, 1.0],
        physicsClientId=cid,
    )
    return p.createMultiBody(0, -1, shape, [0, 0, 0], physicsClientId=cid)


class CameraScene:
    """What the cameras see in one physics client: the ground tiles and the markers of the
    active events, nothing else.

    Built right after the physics reset. It adds one flat quad per zone and the river as one
    triangle strip (two triangles per river segment: the renderer's cost grows with triangles,
    and boxes would cost six times as many). It hides every other body (the physics' ground
    plane lies under the tiles; a 9 cm drone is at most a pixel or two of a 16 px image, and
    drawing N drones in each of N images costs O(N^2) per tick) and every inactive marker, by
    alpha 0, which the tiny renderer skips without drawing. ``sync`` shows the markers whose
    events are active (``physics.shown``) before each render.
    """

    def __init__(self, physics: DronePhysics, pmap: PatrolMap):
        self.physics = physics
        cid = physics.cid
        marker_ids = set(physics.markers.values())
        for i in range(p.getNumBodies(physicsClientId=cid)):
            body = p.getBodyUniqueId(i, physicsClientId=cid)
            if body not in marker_ids:
                for link in range(-1, p.getNumJoints(body, physicsClientId=cid)):
                    p.changeVisualShape(body, link, rgbaColor=_HIDDEN, physicsClientId=cid)
        for z, name in enumerate(ZONES):
            x0, y0, x1, y1 = pmap.zone_rects[z]
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            _flat_mesh(cid, corners, TILE_Z_M, [0, 1, 2, 0, 2, 3], ZONE_RGB[name])
        # River banks: the polyline moved half the width along its normal, each way.
        r = pmap.river  # (R, 2)
        tangent = np.gradient(r, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)  # (R, 2)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)  # (R, 2) to the left
        half = RIVER_WIDTH_M / 2
        banks = np.stack([r - half * normal, r + half * normal], axis=1).reshape(-1, 2)  # (2R, 2)
        tris = []  # vertex 2i is on the right bank, 2i+1 on the left
        for i in range(len(r) - 1):
            a, b, c, d = 2 * i, 2 * i + 1, 2 * i + 2, 2 * i + 3
            tris += [a, c, b, b, c, d]
        _flat_mesh(cid, banks, WATER_Z_M, tris, WATER_RGB)
        # Markers: their own colour when shown, hidden otherwise.
        self._rgba = {
            body: p.getVisualShapeData(body, physicsClientId=cid)[0][7]
            for body in physics.markers.values()
        }
        for body in self._rgba:
            p.changeVisualShape(body, -1, rgbaColor=_HIDDEN, physicsClientId=cid)
        self.shown = np.zeros_like(physics.shown)  # (P,) class whose marker is visible
        self.sync()

    def sync(self) -> None:
        """Make the visible markers those of ``physics.shown``."""
        shown = self.physics.shown
        for pt in np.flatnonzero(shown != self.shown).tolist():
            for cls, rgba in ((int(self.shown[pt]), _HIDDEN), (int(shown[pt]), None)):
                if cls:
                    body = self.physics.markers[(pt, cls)]
                    colour = self._rgba[body] if rgba is None else rgba
                    p.changeVisualShape(
                        body, -1, rgbaColor=colour, physicsClientId=self.physics.cid
                    )
            self.shown[pt] = shown[pt]


class CameraSensor:
    def __init__(self, cfg: DronePatrolConfig, pmap: PatrolMap):
        self.cfg = cfg
        self.pmap = pmap
        self.px = cfg.camera_px
        self.fov_deg = cfg.camera_fov_deg
        self.obs_dim = observation_dim(cfg)
        self.scene: CameraScene | None = None

    def attach(self, physics: DronePhysics) -> None:
        """Build the camera's scene in the physics client: after every ``physics.reset``."""
        self.scene = CameraScene(physics, self.pmap)

    # ---- rendering -----------------------------------------------------------------------

    def render(self, cid: int, eyes: np.ndarray) -> np.ndarray:
        """Downward images from camera positions ``eyes`` (M, 3) in client ``cid``:
        (M, px, px, 3) uint8."""
        px = self.px
        out = np.empty((len(eyes), px, px, CHANNELS), dtype=np.uint8)
        for i, (x, y, z) in enumerate(eyes.tolist()):
            view = p.computeViewMatrix([x, y, z], [x, y, z - 1.0], _UP, physicsClientId=cid)
            proj = p.computeProjectionMatrixFOV(
                self.fov_deg, 1.0, NEAR_M, max(z, NEAR_M) + FAR_BELOW_GROUND_M
            )
            rgba = p.getCameraImage(
                px,
                px,
                view,
                proj,
                lightDirection=LIGHT_DIRECTION,
                shadow=0,
                renderer=p.ER_TINY_RENDERER,
                flags=p.ER_NO_SEGMENTATION_MASK,
                physicsClientId=cid,
            )[2]
            out[i] = np.reshape(rgba, (px, px, 4))[..., :CHANNELS]
        return out

    def to_obs(
        self,
        images: np.ndarray,
        altitude: np.ndarray,
        speed: np.ndarray,
        heading: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """images (*S, px, px, 3) uint8 and telemetry inputs of shape S -> (*S, obs_dim)
        float32: noisy pixels in [0, 1] (HWC order), then the telemetry."""
        x = images.reshape(*images.shape[:-3], -1) / 255.0  # (*S, px*px*3)
        x = np.clip(x + PIXEL_NOISE * rng.standard_normal(x.shape), 0.0, 1.0)
        return np.concatenate([x, telemetry(altitude, speed, heading)], -1).astype(np.float32)

    def observe(
        self,
        physics: DronePhysics,
        speed: np.ndarray,
        heading: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """What every drone sees now, from its position: speed (N,), heading (N,) ->
        (N, obs_dim)."""
        if self.scene is None or self.scene.physics is not physics:
            raise RuntimeError("attach(physics) after every physics.reset, before observing")
        self.scene.sync()
        pos = physics.pos
        return self.to_obs(self.render(physics.cid, pos), pos[:, 2], speed, heading, rng)

    # ---- probe ---------------------------------------------------------------------------

    def render_probe(self, point: np.ndarray, cls: np.ndarray, eyes: np.ndarray) -> np.ndarray:
        """Images of probe windows in a scene of their own: window i shows class ``cls[i]``
        (0 = nothing) at cruise point ``point[i]`` while its camera visits ``eyes[i]``.

        point (n,) int64, cls (n,) int64, eyes (n, w, 3) -> (n, w, px, px, 3) uint8. The scene is
        a second ``DronePhysics`` (its own DIRECT client, the live markers' look) with the
        camera's scene, built for this call and closed after it: the live client is never
        touched.
        """
        n, w = eyes.shape[:2]
        out = np.empty((n, w, self.px, self.px, CHANNELS), dtype=np.uint8)
        hosts = sorted({(int(a), int(c)) for a, c in zip(point, cls, strict=True) if c > 0})
        physics = DronePhysics(self.cfg, self.pmap, hosts)
        try:
            # One drone body, parked outside the area and never stepped: the physics wants one,
            # the scene hides it.
            physics.reset(np.array([[10.0 * self.cfg.area_m, 0.0, 1.0]]))
            scene = CameraScene(physics, self.pmap)
            for pt in np.unique(point).tolist():
                at = point == pt
                for c in np.unique(cls[at]).tolist():
                    sel = np.flatnonzero(at & (cls == c))
                    physics.show_event(pt, c)
                    scene.sync()
                    images = self.render(physics.cid, eyes[sel].reshape(-1, 3))
                    out[sel] = images.reshape(len(sel), w, *images.shape[1:])
                    physics.show_event(pt, 0)
        finally:
            physics.close()
        return out
