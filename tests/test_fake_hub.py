"""The Hub double holds pdd-hub to the real client: its signatures, its repo type, its method names."""

import huggingface_hub
import pytest

from tests.fake_hub import TOKEN, FakeHub
from tests.fake_hub import fake_hub as fake_hub_fixture

fake_hub = fake_hub_fixture  # rebound: ruff takes a test argument named like an import for F811


def test_calls_are_bound_to_the_real_signatures(fake_hub: FakeHub) -> None:
    api = huggingface_hub.HfApi(token=TOKEN)
    with pytest.raises(TypeError):  # a keyword the real create_repo does not take
        api.create_repo("org/x", repo_type="dataset", privat=True)
    with pytest.raises(ValueError, match="dataset repos"):  # the real client would make a model repo
        api.create_repo("org/x")
    with pytest.raises(AttributeError):  # a call the double does not answer: no silent success
        api.upload_file(path_or_fileobj=b"", path_in_repo="x", repo_id="org/x", repo_type="dataset")
    assert fake_hub.apis == [{"token": TOKEN}] and not fake_hub.calls and not fake_hub.refs
