"""The web dashboard: see the agent learn, and steer it, in a browser.

`selftrain serve` serves it at `/` next to the API: sign in with an API key; pages for
the overview, interactions, jobs, versions and training runs. Server-rendered HTML and
SVG charts, assets served by the app itself: it works offline, with no build step.
"""

from fastapi import APIRouter

from selftrain.dashboard import interactions, jobs, overview, training, versions, web

router = APIRouter(include_in_schema=False)
for pages in (web, overview, interactions, jobs, versions, training):
    router.include_router(pages.router)
