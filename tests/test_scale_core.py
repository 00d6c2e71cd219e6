"""The core of the suite against the scale profile as well (issue 18): records, history
sharing, telemetry, the state bot and the rooms bot's exactly-once provisioning.

The same test functions as the embedded run (imported here, nothing copied), with the
``homeserver`` and ``appservice_hs`` fixtures of this module: the session's one
scale-profile Synapse (conftest.py's ``scale_core_hs``), which tests/test_scale.py uses
too. They run in the xdist group ``scale-core``: one worker, one such Synapse. With
``DATAROOMS_TEST_PROFILE=scale`` the whole suite runs on the scale profile and this
module adds nothing.
"""

from __future__ import annotations

import pytest

from datarooms.testing import TestHomeserver, TestScaleHomeserver, test_profile
from tests._roomsbot import AppserviceHomeserver
from tests.test_records import *  # noqa: F403
from tests.test_roomsbot_exactly_once import *  # noqa: F403
from tests.test_sharing import *  # noqa: F403
from tests.test_statebot import *  # noqa: F403
from tests.test_telemetry import *  # noqa: F403

if test_profile() == "scale":  # the whole suite is on the scale profile already
    pytestmark = pytest.mark.skip(reason="DATAROOMS_TEST_PROFILE=scale runs these modules")
else:
    # conftest.py gives every test here this group, before the imported tests' own.
    pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("scale-core")]

GROUP = "scale-core"


@pytest.fixture(scope="session")
def homeserver(scale_core_hs: AppserviceHomeserver) -> TestHomeserver:
    return scale_core_hs.hs


@pytest.fixture(scope="session")
def appservice_hs(scale_core_hs: AppserviceHomeserver) -> AppserviceHomeserver:
    return scale_core_hs


def test_these_tests_run_on_the_scale_profile(
    homeserver: TestHomeserver, appservice_hs: AppserviceHomeserver
) -> None:
    assert isinstance(homeserver, TestScaleHomeserver)
    assert appservice_hs.hs is homeserver  # one Synapse for all of them
    assert len(homeserver.scale.topology.persisters) == 2
