"""The OHIF configuration the app serves: ``GET /ohif/app-config.js`` in front of monailabel's ``/ohif/{path}`` route.

monailabel 0.8.5 serves the OHIF v3.10 build in its package (``endpoints/static/ohif``) with an ``app-config.js`` that
has no way to save a segmentation: "Export DICOM SEG" fails with ``TypeError: Cannot read properties of undefined
(reading 'store')`` (OHIF bug Viewers#4584: the segmentation panel runs the ``storeSegmentation`` command without a
data source, and the dicom-seg extension's command needs one). This config, found by trying it against Orthanc (see
``../shared/OHIF-SAVE.md``), changes no OHIF file:

- the same DICOMweb data source as monailabel's (the app's query-forwarding proxy ``/proxy/dicom/{qido,wado}``;
  STOW-RS goes to ``POST <wadoRoot>/studies``, which the proxy forwards);
- ``@ohif/extension-cornerstone-dicom-seg`` loaded at start-up, then a small inline extension (:data:`EXTENSION_ID`)
  whose ``storeSegmentation`` command, registered last and so found first by the panel's context-less call, runs the
  dicom-seg command with the active data source and shows a success or error notification;
- that command and ``downloadSegmentation`` hand OHIF's SEG export the labelmap slices in the order in which dcmjs
  pairs them with their images (:data:`_SEG_ORDER_JS`): without it, a series whose InstanceNumber does not count
  down the slice normal (for an axial series: numbered feet to head, as the sample study and the project's DICOM
  writer number them) was saved reversed along the normal (dcmjs#193, OHIF Viewers#5038), although the overlay
  OHIF shows is in place;
- in the MONAI Label mode, the extension puts the cornerstone Segmentation panel (``panelSegmentation``; the
  "WithTools" variant crashes there) next to the MONAI Label panel, so the save is reachable there too.

OHIF codes every segment as "Tissue" with algorithm type MANUAL, so the app does not trust codes: a SEG read as a
label maps its segments by name (``lib.datastore.segment_values``: liver = 1, tumor = 2). And a SEG that OHIF stores
through the app's proxy (STOW-RS) is re-coded on the way when all its segments are named after the app's labels
(:func:`recode_stow`): liver as SNOMED CT Liver (10200004), tumor as Neoplasm (108369006) in the liver, as
``liverseg.dicom.seg`` codes them, so other viewers and PACS queries see what the segments are.
"""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

EXTENSION_ID = "liverseg-ohif-save"
SEG_EXTENSION = "@ohif/extension-cornerstone-dicom-seg"
SEG_COMMANDS_CONTEXT = "SEGMENTATION"  # the dicom-seg extension's commands context (its storeSegmentation)
SEGMENTATION_PANEL = "@ohif/extension-cornerstone.panelModule.panelSegmentation"
MONAI_LABEL_ROUTE = "monai-label"  # routeName of @ohif/mode-monai-label
SEG_ORDER_FN = "liversegSegExportOrder"  # app-config.js global: the SEG export's slice order (_SEG_ORDER_JS)
ROUTE = "/ohif/app-config.js"


def data_source(api_prefix: str = "") -> Dict[str, Any]:
    """OHIF's DICOMweb data source through the app's proxy (same settings as monailabel's own app-config.js)."""
    root = f"{api_prefix.rstrip('/')}/proxy/dicom"
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "DICOMweb server (through the liver app)",
            "name": "dicomweb",
            "wadoUriRoot": f"{root}/wado",
            "qidoRoot": f"{root}/qido",
            "wadoRoot": f"{root}/wado",
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": False,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "dicomUploadEnabled": True,
            "bulkDataURI": {"enabled": True},
        },
    }


def base_config(api_prefix: str = "") -> Dict[str, Any]:
    """The JSON part of ``window.config`` (the extensions are added as JavaScript by :func:`app_config_js`)."""
    return {
        "routerBasename": "/ohif/",
        "showStudyList": True,
        "modes": [],
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicomweb",
        "useSharedArrayBuffer": "FALSE",
        "dataSources": [data_source(api_prefix)],
    }


# OHIF 3.10's SEG export (the dicom-seg extension's generateSegmentation, behind "Export DICOM SEG" and "Download DICOM
# SEG") gives the cornerstone adapter the labelmap slices and their referenced images in the order of the
# segmentation's imageIds (the display set's: InstanceNumber order); dcmjs's Normalizer re-sorts the referenced images
# by position along the slice normal (row x column direction), highest first, and the adapter then pairs labelmap
# slice i with re-sorted frame i. A series whose InstanceNumber does not run that way (the sample study, and any
# series numbered feet to head) got a SEG reversed along the normal (dcmjs#193, OHIF Viewers#5038; open upstream),
# while the overlay itself is in place. Handing the export the slices already in dcmjs's order makes the pairing
# right, whatever the numbering; the function returns what puts the segmentation's own order back. Plain ES2017.
_SEG_ORDER_JS = """function __SEG_ORDER_FN__(segmentationId) {
  const unchanged = () => {};
  try {
    const cs = window.cornerstone;
    const segmentation = window.cornerstoneTools.segmentation.state.getSegmentation(segmentationId);
    const labelmap = segmentation && segmentation.representationData && segmentation.representationData.Labelmap;
    const imageIds = labelmap && labelmap.imageIds;
    if (!Array.isArray(imageIds) || imageIds.length < 2) {
      return unchanged;
    }
    const planes = imageIds.map(id => {
      const image = cs.cache.getImage(id);
      return image && image.referencedImageId ? cs.metaData.get('instance', image.referencedImageId) : undefined;
    });
    if (planes.some(p => !p || !p.ImagePositionPatient || !p.ImageOrientationPatient)) {
      return unchanged;
    }
    const o = planes[0].ImageOrientationPatient.map(Number);
    const normal = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
    const along = planes.map(p => p.ImagePositionPatient.map(Number).reduce((sum, v, i) => sum + v * normal[i], 0));
    const sorted = imageIds.map((id, i) => i).sort((a, b) => along[b] - along[a]).map(i => imageIds[i]);
    labelmap.imageIds = sorted;
    return () => {
      if (labelmap.imageIds === sorted) {
        labelmap.imageIds = imageIds;
      }
    };
  } catch (error) {
    console.warn('liverseg: the SEG export keeps the slice order of the segmentation', error);
    return unchanged;
  }
}"""

# The inline extension (plain ES2017, no build step). Placeholders __NAME__ are filled from the constants above.
_EXTENSION_JS = """{
  id: __EXTENSION_ID__,
  getCommandsModule: ({ servicesManager, commandsManager, extensionManager }) => ({
    definitions: {
      storeSegmentation: {
        commandFn: async ({ segmentationId }) => {
          const { uiNotificationService } = servicesManager.services;
          const restore = __SEG_ORDER_FN__(segmentationId);
          try {
            const dataSource = extensionManager.getActiveDataSource()[0];
            const stored = await commandsManager.runCommand(
              'storeSegmentation', { segmentationId, dataSource }, __SEG_CONTEXT__);
            if (stored) {
              uiNotificationService.show({
                title: 'Segmentation saved',
                message: 'Segmentation saved to the DICOMweb server',
                type: 'success',
              });
            }
            return stored;
          } catch (error) {
            console.error('liverseg: saving the segmentation failed', error);
            uiNotificationService.show({
              title: 'Segmentation not saved',
              message: String((error && error.message) || error),
              type: 'error',
            });
          } finally {
            restore();
          }
        },
      },
      downloadSegmentation: {
        commandFn: ({ segmentationId }) => {
          const restore = __SEG_ORDER_FN__(segmentationId);
          try {
            return commandsManager.runCommand('downloadSegmentation', { segmentationId }, __SEG_CONTEXT__);
          } finally {
            restore();
          }
        },
      },
    },
    defaultContext: 'LIVERSEG',
  }),
  onModeEnter: ({ servicesManager }) => {
    const route = '/' + __MONAI_LABEL_ROUTE__;
    if (!window.location.pathname.includes(route)) {
      return;
    }
    const { panelService } = servicesManager.services;
    const right = 'right';
    const ensurePanel = () => {
      const panels = panelService.getPanels(right);
      if (panels.length && !panels.some(p => p && p.id === __SEG_PANEL__)) {
        panelService.addPanel(right, __SEG_PANEL__);
      }
    };
    const event = (panelService.EVENTS && panelService.EVENTS.PANELS_CHANGED) || 'event::panelService:panelsChanged';
    const subscription = panelService.subscribe(event, ({ position }) => {
      if (position === right) {
        ensurePanel();
      }
    });
    window.__liversegPanelSubscription = subscription;
    ensurePanel();
  },
  onModeExit: () => {
    const subscription = window.__liversegPanelSubscription;
    if (subscription && subscription.unsubscribe) {
      subscription.unsubscribe();
    }
    window.__liversegPanelSubscription = undefined;
  },
}"""


def extension_js() -> str:
    """The inline OHIF extension as a JavaScript object literal."""
    values = {
        "__EXTENSION_ID__": EXTENSION_ID,
        "__SEG_CONTEXT__": SEG_COMMANDS_CONTEXT,
        "__SEG_PANEL__": SEGMENTATION_PANEL,
        "__MONAI_LABEL_ROUTE__": MONAI_LABEL_ROUTE,
    }
    js = _EXTENSION_JS.replace("__SEG_ORDER_FN__", SEG_ORDER_FN)
    for name, value in values.items():
        js = js.replace(name, json.dumps(value))
    return js


def seg_order_js() -> str:
    """The global function that gives OHIF's SEG export the slices in the order dcmjs pairs them in
    (:data:`_SEG_ORDER_JS`)."""
    return _SEG_ORDER_JS.replace("__SEG_ORDER_FN__", SEG_ORDER_FN)


def app_config_js(api_prefix: str = "") -> str:
    """The whole ``app-config.js``: ``window.config`` = :func:`base_config` + the dicom-seg extension loaded at
    start-up + the inline save extension (and the SEG export's slice order, :func:`seg_order_js`)."""
    config = json.dumps(base_config(api_prefix), indent=2)
    return (
        "/* OHIF configuration served by the liverseg liver app (apps/liver/lib/ohif.py): DICOMweb through the app's\n"
        " * proxy, and 'Export DICOM SEG' that stores into the same DICOMweb server (works around OHIF Viewers#4584)\n"
        " * with its slices in place (works around dcmjs#193 / OHIF Viewers#5038).\n"
        " */\n"
        f"window.config = {config};\n"
        f"{seg_order_js()}\n"
        f"window.config.extensions = [{json.dumps(SEG_EXTENSION)}, {extension_js()}];\n"
    )


def install_ohif_config(fastapi_app: Any, api_prefix: str = "") -> int:
    """Put ``GET /ohif/app-config.js`` (served :func:`app_config_js`) in front of ``fastapi_app``'s routes, so it wins
    over monailabel's ``/ohif/{path}``; same role check as monailabel's OHIF route. Returns the routes added (1)."""
    from fastapi import APIRouter, Depends
    from fastapi.responses import Response
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User

    body = app_config_js(api_prefix)

    async def liverseg_ohif_app_config(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return Response(
            content=body, media_type="application/javascript", headers={"Cache-Control": "no-cache, must-revalidate"}
        )

    router = APIRouter()
    router.add_api_route(ROUTE, liverseg_ohif_app_config, methods=["GET"], include_in_schema=False)
    routes = fastapi_app.router.routes
    before = len(routes)
    fastapi_app.include_router(router, prefix=api_prefix)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
    logger.info("OHIF: %s%s serves the liver app's configuration (save to DICOMweb)", api_prefix, ROUTE)
    return len(added)


# ---------------------------------------------------------------------------------------------------------------
# SEGs that OHIF stores: re-coded by segment name on the way through the app's DICOMweb proxy
# ---------------------------------------------------------------------------------------------------------------

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def _segment_value(name: Any) -> Optional[int]:
    from lib.datastore import BACKGROUND_NAMES, SEGMENT_SYNONYMS, SEGMENT_VALUES

    key = " ".join(str(name or "").lower().split())
    return {**BACKGROUND_NAMES, **SEGMENT_SYNONYMS, **SEGMENT_VALUES}.get(key)


def recode_seg(ds: Any) -> bool:
    """Code the segments of a DICOM SEG ``ds`` by their names (``liver`` / ``tumor`` and synonyms, any case) as
    ``liverseg.dicom.seg`` does; True when something changed. A segment named ``background`` (OHIF's, when the
    interactive model is served) keeps its codes; a SEG with a segment of another name is left as it is (its codes may
    mean something the app does not know)."""
    from liverseg.dicom.seg import code_segment

    if str(getattr(ds, "SOPClassUID", "")) != SEG_SOP_CLASS or "SegmentSequence" not in ds:
        return False
    values = [_segment_value(getattr(item, "SegmentLabel", "")) for item in ds.SegmentSequence]
    if not values or any(v is None for v in values):
        return False
    before = [item.to_json_dict() for item in ds.SegmentSequence]
    for item, value in zip(ds.SegmentSequence, values):
        if value:  # a "background" segment is no structure: its codes stay as they are
            code_segment(item, value)
    return [item.to_json_dict() for item in ds.SegmentSequence] != before


def _parts(body: bytes, boundary: bytes) -> Optional[List[Tuple[bytes, bytes]]]:
    """``(headers, content)`` of each part of a multipart body, or None when it is not well formed."""
    delimiter = b"--" + boundary
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        return None
    parts = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or b"\r\n\r\n" not in chunk:
            return None
        headers, content = chunk[2:].split(b"\r\n\r\n", 1)
        if not content.endswith(b"\r\n"):
            return None
        parts.append((headers, content[:-2]))
    return parts


def recode_stow(body: bytes, content_type: Optional[str]) -> Optional[bytes]:
    """A STOW-RS request body (``multipart/related``, one DICOM instance per part) with its SEGs re-coded by
    :func:`recode_seg`, in the same multipart framing (boundary and part headers kept); None when nothing changed
    or the body is not such a request (it is then forwarded as it came)."""
    import pydicom

    match = _BOUNDARY.search(content_type or "")
    if not body or not match or not (content_type or "").lower().startswith("multipart/related"):
        return None
    boundary = match.group(1).strip().encode("latin-1")
    parts = _parts(body, boundary)
    if not parts:
        return None
    out, changed = [], False
    for headers, content in parts:
        if b"application/dicom" in headers.lower() and b"DICM" in content[128:132]:
            ds = pydicom.dcmread(io.BytesIO(content))
            if recode_seg(ds):
                buffer = io.BytesIO()
                ds.save_as(buffer, write_like_original=False)
                new = buffer.getvalue()
                if b"--" + boundary in new:  # would break the framing (practically never): keep the original
                    logger.warning("OHIF SEG not re-coded: its bytes hold the multipart boundary")
                else:
                    content, changed = new, True
                    logger.info("OHIF SEG %s: segments coded by name (liver / tumor, SNOMED CT)", ds.SOPInstanceUID)
        out.append(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n")
    if not changed:
        return None
    return b"".join(out) + b"--" + boundary + b"--\r\n"
