"""A real browser for tests: Debian's chromium, driven by selenium through chromium-driver.

Headless, no sandbox (tests may run as root in a container), nothing fetched from anywhere:
the driver binary is given explicitly, so selenium never looks for (or downloads) one.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

T = TypeVar("T")


def browser_problem() -> str | None:
    """Why no browser test can run here, or None."""
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    return None


@contextmanager
def chromium(width: int = 1480, height: int = 1240) -> Iterator[Any]:
    """A headless chromium session (a selenium WebDriver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "a condition") -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.02)


def by_testid(driver: Any, testid: str) -> Any:
    """The first element with ``data-testid``."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def all_by_testid(driver: Any, testid: str) -> list[Any]:
    """Every element with ``data-testid``."""
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'))


def login(driver: Any, url: str, token: str) -> None:
    """Log in through the form (the token is typed, never put in a URL)."""
    driver.get(f"{url}/ui/")
    wait_for(lambda: "/ui/login" in driver.current_url, what="the redirect to the login form")
    by_testid(driver, "login-token").send_keys(token)
    by_testid(driver, "login-submit").click()
    wait_for(lambda: all_by_testid(driver, "worklist"), what="the worklist")


def element_pixels(element: Any) -> npt.NDArray[np.uint8]:
    """An element's on-screen pixels as an RGB array (rows, columns, 3)."""
    image = Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def colour_pixels(pixels: npt.NDArray[np.uint8], rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels are within ``tol`` (per channel) of ``rgb``."""
    close = np.abs(pixels.astype(np.int16) - np.asarray(rgb, dtype=np.int16)) <= tol
    return int(np.count_nonzero(close.all(axis=-1)))
