"""One module per REST resource; each exposes ``api`` (an ``APIRouter`` under ``/api/v1``)."""
